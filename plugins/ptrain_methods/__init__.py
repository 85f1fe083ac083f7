"""ptrain's built-in methods. Each module is a plugin registered under the ``ptrain`` entry-point
group, using only the public ``ptrain`` API: copy any of them to start your own."""
