"""Drives one headless Chromium for tests/dashboard.rs.

The Rust test owns the hosts, the broker and every assertion; this script
only operates the browser. It reads one JSON command per line on stdin and
answers one JSON line on stdout ({"ok": true, "value": ...} or {"ok":
false, "error": "..."}), so the browser starts once for all pages.

Commands: goto(url), eval(js: an expression or a function body's value),
click(selector), fill(selector, value), files(selector, path),
screenshot(path), quit.

Environment: KWASM_CHROMIUM, the Chromium binary (Debian's; Playwright's
own browser download cannot run here).
"""

import json
import os
import sys

from playwright.sync_api import sync_playwright

# Headless as root, with nothing fetched from the network by the browser.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def main():
    chromium = os.environ.get("KWASM_CHROMIUM")
    if not chromium:
        print(json.dumps({"ok": False, "error": "KWASM_CHROMIUM is not set"}), flush=True)
        return 2
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        console = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        print(json.dumps({"ok": True, "value": browser.version}), flush=True)
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd["op"]
            try:
                value = None
                if op == "goto":
                    page.goto(cmd["url"])
                    value = page.url
                elif op == "eval":
                    value = page.evaluate(cmd["js"])
                elif op == "click":
                    page.click(cmd["selector"], timeout=10_000)
                elif op == "fill":
                    page.fill(cmd["selector"], cmd["value"], timeout=10_000)
                elif op == "files":
                    page.set_input_files(cmd["selector"], cmd["path"], timeout=10_000)
                elif op == "screenshot":
                    page.screenshot(path=cmd["path"], full_page=True)
                elif op == "console":
                    value = console[-50:]
                elif op == "quit":
                    print(json.dumps({"ok": True, "value": None}), flush=True)
                    break
                else:
                    raise ValueError(f"unknown op {op!r}")
                print(json.dumps({"ok": True, "value": value}), flush=True)
            except Exception as e:  # the test prints it and fails
                print(json.dumps({"ok": False, "error": f"{op}: {e}"}), flush=True)
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
