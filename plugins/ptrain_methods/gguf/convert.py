"""Writing a transformers model directory as one GGUF file, with the ``gguf`` package (no llama.cpp needed).

The layout is llama.cpp's own (``convert_hf_to_gguf.py``), re-done here because the ``gguf`` package ships
the writer, the tensor-name map and the numpy quantizers but not that script:

* architecture keys and tensor names from :func:`gguf.get_tensor_name_map` (``model.layers.0.self_attn.q_proj``
  -> ``blk.0.attn_q``); the llama family (Llama, SmolLM2, TinyLlama, Mistral: ``general.architecture = llama``)
  and Qwen2 (``qwen2``: biases on q/k/v, no permutation);
* llama's query and key rows permuted from Hugging Face's rotary layout (two halves) to GGML's (pairs),
  which every GGUF reader undoes;
* the tokenizer from ``tokenizer.json``: a byte-level BPE as ``gpt2`` (SmolLM2, Llama 3, Qwen2), a
  SentencePiece-style one (``▁`` for spaces, ``<0xNN>`` bytes) as ``llama`` with its merges; special token
  ids, whether BOS/EOS are added, and the chat template;
* norms and other 1-D tensors in float32 as llama.cpp keeps them; a weight whose rows do not fill whole
  quantization blocks stays float16 (llama.cpp's fallback too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptrain import UsageError

ARCHITECTURES = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2"}
"""``config.model_type`` -> the gguf package's ``MODEL_ARCH`` member."""
PERMUTED = {"LLAMA"}
"""Architectures whose q/k rows llama.cpp permutes."""
NUMPY_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
"""Types the gguf package writes in numpy."""
LLAMA_CPP_TYPES = ("q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q3_k_m", "q2_k")
"""Types only llama.cpp's quantizer writes (``pip install "ptrain[llamacpp]"``)."""
LOSSLESS = ("f32", "f16", "bf16")
"""Types that only round each weight: the reload must equal the source model rounded the same way."""


@dataclass
class Written:
    path: Path
    type: str
    architecture: str
    tokenizer: str
    tensors: int
    kept_f16: list[str]


def _gguf_type(name: str) -> tuple[Any, Any]:
    """``(GGMLQuantizationType, LlamaFileType)`` of a type name such as ``q8_0``."""
    import gguf

    upper = name.upper()
    return gguf.GGMLQuantizationType[upper], gguf.LlamaFileType[f"MOSTLY_{upper}" if upper != "F32" else "ALL_F32"]


def permute(weights: Any, heads: int) -> Any:
    """Hugging Face's rotary layout (the two halves of each head) -> GGML's (interleaved pairs), as llama.cpp does."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _state_dict(directory: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise UsageError(f"{directory}: no *.safetensors weights to convert to GGUF")
    tensors: dict[str, Any] = {}
    for file in files:
        try:
            tensors.update(load_file(str(file)))
        except TypeError:  # bfloat16 has no numpy dtype: go through torch
            from safetensors.torch import load_file as load_torch

            tensors.update({k: v.float().numpy() for k, v in load_torch(str(file)).items()})
    return tensors


def architecture_of(config: dict[str, Any], directory: Path) -> str:
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UsageError(
            f"{directory}/config.json: model_type {model_type!r} has no GGUF mapping in ptrain "
            f"(supported: {', '.join(sorted(ARCHITECTURES))}); export it with llama.cpp's convert_hf_to_gguf.py"
        )
    scaling = config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type") or scaling.get("type") if isinstance(scaling, dict) else None
    if rope_type not in (None, "default"):
        raise UsageError(f"{directory}/config.json: rope_scaling {rope_type!r} is not written to GGUF by ptrain; use llama.cpp's converter")
    return ARCHITECTURES[model_type]


def write_gguf(directory: Path, target: Path, qtype: str, chat_template: str | None, name: str) -> Written:
    """Convert the model in ``directory`` (config.json, safetensors, tokenizer.json) to ``target`` as ``qtype``."""
    import gguf
    import numpy as np

    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    arch_name = architecture_of(config, directory)
    arch = gguf.MODEL_ARCH[arch_name]
    blocks = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    tensor_type, file_type = _gguf_type(qtype)
    writer = gguf.GGUFWriter(str(target), gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta") or 10000.0))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-6))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokenizer_model = add_tokenizer(writer, directory, int(config["vocab_size"]), chat_template, config.get("model_type"))

    names = gguf.get_tensor_name_map(arch, blocks)
    kept_f16: list[str] = []
    count = 0
    for hf_name, data in _state_dict(directory).items():
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # llama.cpp reads the embedding as the output head
        mapped = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            raise UsageError(f"{directory}: tensor {hf_name!r} has no GGUF name for {arch_name.lower()}; is the model a plain {arch_name.lower()}?")
        data = np.asarray(data, dtype=np.float32)
        if arch_name in PERMUTED and hf_name.endswith("q_proj.weight"):
            data = permute(data, heads)
        elif arch_name in PERMUTED and hf_name.endswith("k_proj.weight"):
            data = permute(data, kv_heads)
        if data.ndim < 2:
            kind = gguf.GGMLQuantizationType.F32  # norms and biases: llama.cpp keeps them in float32
        else:
            kind = tensor_type
            block = gguf.GGML_QUANT_SIZES[kind][0]
            if data.shape[-1] % block:
                kind = gguf.GGMLQuantizationType.F16
                kept_f16.append(mapped)
        if kind == gguf.GGMLQuantizationType.F32:
            stored = data
        elif kind == gguf.GGMLQuantizationType.F16:
            stored = data.astype(np.float16)
        else:
            stored = gguf.quants.quantize(data, kind)
        writer.add_tensor(mapped, stored, raw_dtype=kind)
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Written(target, qtype, gguf.MODEL_ARCH_NAMES[arch], tokenizer_model, count, kept_f16)


def _component_types(tree: dict[str, Any] | None) -> set[str]:
    """Every ``type`` in a tokenizer.json component (pre_tokenizer, decoder…), sequences flattened."""
    if not isinstance(tree, dict):
        return set()
    found = {tree.get("type", "")}
    for child in tree.get("pretokenizers", []) + tree.get("decoders", []) + tree.get("normalizers", []):
        found |= _component_types(child)
    return found


def add_tokenizer(writer: Any, directory: Path, vocab_size: int, chat_template: str | None, model_type: str | None = None) -> str:
    """The vocabulary, merges, special ids and chat template of ``directory/tokenizer.json``; returns the GGUF tokenizer model."""
    import gguf
    from transformers import AutoTokenizer

    path = directory / "tokenizer.json"
    if not path.is_file():
        raise UsageError(f"{directory}: no tokenizer.json (a fast tokenizer) to write into the GGUF file")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise UsageError(f"{path}: a {model.get('type')} tokenizer; ptrain writes BPE tokenizers (byte-level or SentencePiece-style) to GGUF")
    parts = _component_types(spec.get("pre_tokenizer")) | _component_types(spec.get("decoder"))
    byte_level = "ByteLevel" in parts
    if not byte_level and "Metaspace" not in parts and not model.get("byte_fallback"):
        raise UsageError(f"{path}: neither byte-level nor SentencePiece-style BPE; ptrain cannot write this tokenizer to GGUF")
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    for content, token in added.items():
        vocab[content] = token["id"]
    size = max(vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for text, index in vocab.items():
        tokens[index] = text
        if text in added:
            types[index] = gguf.TokenType.CONTROL if added[text].get("special") else gguf.TokenType.USER_DEFINED
        elif not byte_level and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types[index] = gguf.TokenType.BYTE
        else:
            types[index] = gguf.TokenType.NORMAL
    if tokenizer.unk_token_id is not None and not byte_level:
        types[tokenizer.unk_token_id] = gguf.TokenType.UNKNOWN
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if byte_level:
        writer.add_tokenizer_model("gpt2")
        digits = any(p.get("type") == "Digits" and p.get("individual_digits") for p in (spec.get("pre_tokenizer") or {}).get("pretokenizers", []))
        # the pre-tokenizer's name (its split regex) as llama.cpp knows it; readers rebuild the split from it
        writer.add_tokenizer_pre("qwen2" if model_type == "qwen2" else "smollm" if digits else "gpt-2")
    else:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores([-float(i) for i in range(size)])
        prepend = [p for p in [spec.get("pre_tokenizer") or {}, *(spec.get("pre_tokenizer") or {}).get("pretokenizers", [])] if p.get("type") == "Metaspace"]
        writer.add_add_space_prefix(bool(prepend and prepend[0].get("prepend_scheme", "always") != "never"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(merges)
    probe = tokenizer("a").input_ids
    for kind, token_id in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id), ("unk", tokenizer.unk_token_id),
                           ("pad", tokenizer.pad_token_id)):
        if token_id is not None:
            getattr(writer, f"add_{kind}_token_id")(int(token_id))
    writer.add_add_bos_token(bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and tokenizer.eos_token_id is not None and probe[-1] == tokenizer.eos_token_id)
    if chat_template:
        writer.add_chat_template(chat_template)
    return "gpt2" if byte_level else "llama"
