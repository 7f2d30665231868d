"""The viewer in a real browser: Debian's chromium, driven by Selenium through Debian's chromedriver.

.ci/run installs all of it and sets TINYDIFF_REQUIRE_BROWSER=1, so in CI this test runs or fails, never skips."""
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser_available() -> str | None:
    """None when everything is there, else what is missing."""
    for module in ("streamlit", "selenium"):
        try:
            __import__(module)
        except ImportError:
            return f"python package {module}"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return path
    return None


missing = browser_available()
if missing and os.environ.get("TINYDIFF_REQUIRE_BROWSER") != "1":
    pytest.skip(f"browser test needs {missing}", allow_module_level=True)


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    """The Streamlit command `tinydiff visualize app` execs (commands.app.streamlit_command), on port 0: the server
    binds a free port itself and prints its URL, so no port is picked here first that another process could take.
    Its output goes to a file that a full pipe cannot block."""
    assert missing is None, f"browser test needs {missing}"
    from tinydiff_cli.cli.viewer import streamlit_command

    runs = tiny_run[0].parent
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "TINYDIFF_APP_RUNS": str(runs.resolve())}
    with open(log, "w") as sink:
        proc = subprocess.Popen(streamlit_command(host="127.0.0.1", port=0, open_browser=False), stdout=sink,
                                stderr=subprocess.STDOUT, text=True, env=env)

    def served_url():
        assert proc.poll() is None, f"the app stopped: {log.read_text()}"
        found = re.search(r"URL: (http://127\.0\.0\.1:\d+)", log.read_text())
        return found and found.group(1)

    def healthy(url):
        try:
            return urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok"
        except OSError:
            return False

    try:
        url = wait_for(served_url, 60, "the app to print its URL")
        wait_for(lambda: healthy(url), 60, "the app to serve")
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_choose_class_generate_and_scrub_in_chromium(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, proc = server
    browser.get(url)
    css = lambda selector: browser.find_elements(By.CSS_SELECTOR, selector)  # noqa: E731
    wait_for(lambda: [b for b in css("button") if b.text.strip() == "Generate"], 60, "the Generate button")

    class_box = next(box for box in css('[data-testid="stSelectbox"]') if "Class" in box.text)
    field = class_box.find_element(By.CSS_SELECTOR, "input")
    field.click()
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys("7")
    option = wait_for(lambda: [o for o in css('[role="option"]') if o.text.strip() == "7"], 20, "the class option 7")
    option[0].click()
    wait_for(lambda: class_box.find_element(By.CSS_SELECTOR, "input").get_attribute("value") == "7", 20, "class 7 chosen")

    next(b for b in css("button") if b.text.strip() == "Generate").click()
    main_images = lambda: css('[data-testid="stMain"] [data-testid="stImage"] img')  # noqa: E731
    wait_for(lambda: len(main_images()) >= 3, 90, "x_t, predicted x_0 and the strip")
    wait_for(lambda: "class 7" in css('[data-testid="stMain"]')[0].text, 20, "the caption naming class 7")
    before = main_images()[0].get_attribute("src")
    caption_before = css('[data-testid="stMain"]')[0].text

    step_slider = next(s for s in css('[data-testid="stMain"] [data-testid="stSlider"]') if "Denoising step" in s.text)
    # the slider's keyboard handle is a visually hidden <input type="range">: focus it and press Home, as a user
    # tabbing to it would, moving to the first step (pure noise instead of the finished digit)
    browser.execute_script("arguments[0].focus()", step_slider.find_element(By.CSS_SELECTOR, 'input[type="range"]'))
    ActionChains(browser).send_keys(Keys.HOME).perform()
    wait_for(lambda: main_images() and main_images()[0].get_attribute("src") != before, 30, "the shown image to change")
    assert "step 1/" in css('[data-testid="stMain"]')[0].text
    assert css('[data-testid="stMain"]')[0].text != caption_before

    browser.save_screenshot(os.environ.get("TINYDIFF_SCREENSHOT", str(tmp_path / "viewer.png")))
    assert not css('[data-testid="stException"]'), "the page shows an exception"
    assert not [a for a in css('[data-testid="stAlert"]') if "error" in a.get_attribute("outerHTML").lower()]
    assert proc.poll() is None, "the app stopped serving"
