"""The web page at / in a real headless Chromium: pick a sample, classify, and check what the page
shows against the API's own answer. Saves a screenshot under test-output/."""

import json
import shutil
import sys
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
import seenn_server  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "test-output"


def test_page_classifies_a_sample_like_the_api(tmp_path):
    server = seenn_server.start(["--models", str(REPO / "models"), "--state-dir", str(tmp_path / "state"),
                                 "--default-model", "fashion-mnist"])
    base = server["base"]
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,900", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = None
    try:
        driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
        driver.get(base + "/")
        wait = WebDriverWait(driver, 20)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#samples img")))
        assert "fashion-mnist" in driver.find_element(By.ID, "models").text
        sample = driver.find_elements(By.CSS_SELECTOR, "#samples img")[3]
        sample_url = sample.get_attribute("src")
        sample.click()
        wait.until(lambda d: d.find_element(By.ID, "preview").get_attribute("src") == sample_url)
        driver.find_element(By.ID, "go").click()
        label = wait.until(ec.presence_of_element_located((By.ID, "label"))).text
        shown_t = int(driver.find_element(By.ID, "timesteps").text)
        points = driver.find_elements(By.CSS_SELECTOR, "#chart circle.point")
        OUT.mkdir(exist_ok=True)
        driver.save_screenshot(str(OUT / "web-page.png"))

        # The same image through the API, with the page's default settings.
        png = urllib.request.urlopen(sample_url).read()
        alpha = json.loads(urllib.request.urlopen(f"{base}/v1/models/fashion-mnist").read())["exit_policy"]["alpha"]
        req = urllib.request.Request(f"{base}/v1/models/fashion-mnist/classify?alpha={alpha}", data=png,
                                     headers={"content-type": "image/png"})
        api = json.loads(urllib.request.urlopen(req).read())
        assert label == api["label"]
        assert shown_t == api["timesteps_used"]
        assert len(points) == api["timesteps_used"], "one chart point per timestep run"
        assert driver.find_element(By.ID, "error").text == ""

        # The learned exit rule from the page, at the threshold the page shows, like the API.
        Select(driver.find_element(By.ID, "rule")).select_by_visible_text("learned")
        threshold = driver.find_element(By.ID, "threshold").get_attribute("value")
        previous = driver.find_element(By.ID, "result").text
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: "(learned)" in d.find_element(By.ID, "result").text
                   and d.find_element(By.ID, "result").text != previous)
        req = urllib.request.Request(f"{base}/v1/models/fashion-mnist/classify?rule=learned&threshold={threshold}",
                                     data=png, headers={"content-type": "image/png"})
        api = json.loads(urllib.request.urlopen(req).read())
        assert float(threshold) == api["threshold"]
        assert driver.find_element(By.ID, "label").text == api["label"]
        assert int(driver.find_element(By.ID, "timesteps").text) == api["timesteps_used"]
        assert "threshold = " in driver.find_element(By.ID, "chart").text
        assert driver.find_element(By.ID, "error").text == ""
    finally:
        if driver is not None:
            driver.quit()
        seenn_server.stop(server)
