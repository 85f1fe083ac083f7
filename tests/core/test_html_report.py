"""The HTML report (``report.html`` of every run, ``compare.html`` of ``ptrain compare``), opened in a real headless
Chromium: every section present, images drawn, no console error, a screenshot that is not blank."""

import importlib.util
import io
import os
import shutil

import pytest
from click.testing import CliRunner

from ptrain._cli import cli
from ptrain._html import SECTIONS
from ptrain.testing import tiny_recipe

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
MISSING = [what for what, found in (("chromium", BROWSER), ("chromedriver", DRIVER),
                                    ("selenium", importlib.util.find_spec("selenium"))) if not found]


@pytest.fixture
def browser():
    if MISSING:
        reason = f"needs {', '.join(MISSING)} (apt-get install chromium chromium-driver; pip install -e '.[browser]')"
        if os.environ.get("CI") or os.environ.get("PTRAIN_CI"):  # .ci/run sets PTRAIN_CI
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,3000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.mark.slow
def test_compare_report_opens_in_a_headless_browser(ptrain_run, tiny_lora_run, tmp_path, browser):
    from PIL import Image
    from selenium.webdriver.common.by import By

    sft = ptrain_run(tiny_recipe(["sft"], train={"max_steps": 6, "logging_steps": 1}))
    lora = tiny_lora_run
    assert (sft.dir / "report.html").is_file() and (lora.dir / "report.html").is_file()
    result = CliRunner().invoke(cli, ["compare", str(sft.dir), str(lora.dir), "-o", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    page = tmp_path / "cmp" / "compare.html"
    assert str(page) in result.output.replace("\n", "")
    for report in (page, lora.dir / "report.html"):
        browser.get(report.as_uri())
        assert browser.execute_script("return document.readyState") == "complete"
        for section in SECTIONS:
            element = browser.find_element(By.ID, section)
            assert element.is_displayed() and element.find_element(By.TAG_NAME, "h2").text, section
        images = browser.find_elements(By.TAG_NAME, "img")
        assert len(images) == 2 and all(browser.execute_script("return arguments[0].naturalWidth", i) > 300 for i in images)
        text = browser.find_element(By.ID, "results").text
        assert "LoRA trainable share (%)" in text and "task metric" in text  # the method's declared rows, and the core's
        assert console_errors(browser) == []
        samples = browser.find_elements(By.CSS_SELECTOR, "#samples tr[data-correct]")
        assert samples and browser.find_element(By.ID, "recipe").text.count("methods") >= 1
        # the one script: "only the wrong answers" hides the right ones
        right = [row for row in samples if row.get_attribute("data-correct") == "true"]
        browser.find_element(By.CSS_SELECTOR, "input[data-wrong-only]").click()
        assert all(not row.is_displayed() for row in right[:3])
        shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
        colours = shot.getcolors(maxcolors=1 << 20)
        assert shot.size[0] >= 1000 and colours is not None and len(colours) > 100  # not blank: text, tables and charts
    assert "compare" in browser.title.lower() or "run" in browser.title.lower()
    # the console check is live: an error the page logs is seen
    browser.execute_script("console.error('probe')")
    assert any("probe" in message for message in console_errors(browser))
