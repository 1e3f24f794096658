"""cleannet-review's page (cleannet_tf/review/static) in headless Chromium, against cleannet-review in a subprocess."""

from __future__ import annotations

import json
import os
import signal

from review_helpers import PER_CLASS, Page, proposals, review_rows, start_review_process, wait_for

from cleannet_tf.pipeline import scores_tsv
from cleannet_tf.pipeline.table import load_table


def log_events(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "review", "decisions.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_page_keyboard_decisions_survive_reload_and_sigkill(workdir, browser, tmp_path):
    config_path, work, config = workdir
    log_path = str(tmp_path / "server.log")
    queue_keys = [entry["key"] for entry in proposals(work)]
    ramen = [key for key in queue_keys if key.startswith("ramen/")]
    process, url = start_review_process(config_path, work, log_path)
    try:
        assert url.startswith("http://127.0.0.1:")
        page = Page(browser).open(url)
        assert [key for key, _ in page.cards()] == ramen  # the class without verification first, file order
        assert page.cursor_key() == ramen[0]
        page.press("y")  # correct
        wait_for(lambda: page.decided() == 1, "the first decision")
        page.press("n")  # wrong
        page.press("p")  # pick the right class: type-ahead, Enter
        picker_input = wait_for(lambda: browser.find_element("id", "picker-input").is_displayed()
                                and browser.find_element("id", "picker-input"), "the class picker")
        picker_input.send_keys("bak")
        assert [li.get_attribute("data-class") for li in browser.find_elements("css selector", "#picker-list li")
                ] == ["baklava"]
        picker_input.send_keys("\n")
        wait_for(lambda: page.decided() == 3, "three decisions")
        page.press("s")  # skip ramen[3]
        page.press("y")  # ramen[4] correct ...
        wait_for(lambda: page.decided() == 4, "the fourth decision")
        page.press("u")  # ... undone
        wait_for(lambda: page.decided() == 3 and dict(page.cards())[ramen[4]] == "open", "the undo")
        assert dict(page.cards()) == {ramen[0]: "correct", ramen[1]: "wrong", ramen[2]: "relabel",
                                      ramen[3]: "open", ramen[4]: "open", ramen[5]: "open"}
        expected = ["class_name/key\tverification_label", f"{ramen[0]}\t1", f"{ramen[1]}\t0", f"{ramen[2]}\t0"]
        assert review_rows(work) == expected
        relabel = [e for e in log_events(work) if e["event"] == "decide" and e["decision"] == "relabel"]
        assert [(e["key"], e["label"], e["chosen"], e["user"]) for e in relabel] == [
            (ramen[2], "ramen", "baklava", "tester")]

        # Reload: decided images have left the queue; the skipped one comes first.
        page.open(url.split("?")[0])  # the cookie carries the token now
        assert [key for key, _ in page.cards()] == ramen[3:] and page.cursor_key() == ramen[3]
        assert page.decided() == 3

        # Decide quickly, then SIGKILL the server as soon as the page shows the last decision.
        page.press("nyy")
        wait_for(lambda: page.decided() == 6, "three more decisions")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert review_rows(work) == expected + [f"{ramen[3]}\t0", f"{ramen[4]}\t1", f"{ramen[5]}\t1"]
        assert not [name for name in os.listdir(os.path.join(work, "review")) if ".tmp" in name]
        # ramen is done: the page moved on to the next class of the queue.
        next_class = [key for key in queue_keys if not key.startswith("ramen/")]
        assert page.cursor_key() == next_class[0]
    finally:
        process.kill()
        process.wait(timeout=30)

    process, url = start_review_process(None, work, log_path)  # the config saved by the first run
    try:
        page.open(url)  # a new token: the new URL
        assert page.decided() == 6
        assert [key for key, _ in page.cards()] == [key for key in next_class if key.split("/")[0] ==
                                                    next_class[0].split("/")[0]]
        assert page.cursor_key() == next_class[0]
        page.press("n")
        wait_for(lambda: page.decided() == 7, "a decision after the restart")
        assert review_rows(work)[-1] == f"{next_class[0]}\t0"
        ramen_item = browser.find_element("css selector", '#class-list li[data-class="ramen"] .count').text
        assert ramen_item.startswith("6/6")

        # Browse: filter to the flagged images, open an image's neighbours.
        from selenium.webdriver.support.ui import Select

        page.press("2")
        browse_cards = lambda: browser.find_elements("css selector", "#browse-grid .card")  # noqa: E731
        wait_for(lambda: len(browse_cards()) == 3 * PER_CLASS, "every image in the browse grid")
        Select(browser.find_element("id", "filter-flagged")).select_by_value("1")
        flagged = scores_tsv.read_scores_tsv(os.path.join(work, "verify", "scores.tsv")).noisy.sum()
        wait_for(lambda: len(browse_cards()) == flagged, "the flagged images")
        page.press("g")
        wait_for(lambda: len(browser.find_elements("css selector", "#neighbours-grid .card")) == 12, "neighbours")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    table = load_table(config, work)  # what cleannet-train reads on the next run
    row = {key: i for i, key in enumerate(table.keys)}
    assert [int(table.verification[row[key]]) for key in ramen] == [1, 0, 0, 0, 1, 1]
