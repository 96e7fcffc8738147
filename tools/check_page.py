"""Checks the page of `resnet serve` in a real headless browser (Debian's chromium, driven by Playwright), by hand:

    apt-get install chromium && pip install playwright==1.65.2
    python3 tools/check_page.py --weights runs/fast/seed-0/model.safetensors --image IMAGE.png \
        --expect-class "ankle boot" --screenshot /tmp/page.png

Starts the server on a free loopback port, opens `/`, drops IMAGE on the drop zone the way a file dragged from
the desktop arrives (a `drop` event whose DataTransfer holds the file), waits for the bars, and asserts: the page
shows the model line, the dropped image is displayed, five bars are drawn in decreasing order summing to at most
100 %, the top-1 class shown is the one `resnet predict --json` gives for the same file (and --expect-class, when
given), no request failed and nothing was fetched from another origin. Then it saves a screenshot.

With --why it then ticks the "why?" toggle and asserts: the Grad-CAM heatmap from `/v1/explain` is laid exactly over
the image, at the image's own pixel size, for the page's top-1 class, the same class `resnet predict --explain`
names; then it saves a second screenshot (--why-screenshot).
"""
import argparse
import base64
import json
import os
import re
import subprocess
import sys

from playwright.sync_api import sync_playwright

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--weights', required=True)
    ap.add_argument('--image', required=True)
    ap.add_argument('--expect-class')
    ap.add_argument('--screenshot', default='page.png')
    ap.add_argument('--bin', default=os.path.join(root, 'target/release/resnet'))
    ap.add_argument('--chromium', default='/usr/bin/chromium')
    ap.add_argument('--why', action='store_true', help='also tick "why?" and check the heatmap overlay')
    ap.add_argument('--why-screenshot', default='page-why.png')
    a = ap.parse_args()

    cli = json.loads(subprocess.run([a.bin, 'predict', '--weights', a.weights, '--json', '--topk', '5', a.image],
                                    check=True, capture_output=True, text=True).stdout)
    server = subprocess.Popen([a.bin, 'serve', '--weights', a.weights, '--addr', '127.0.0.1:0'],
                              stdout=subprocess.PIPE, text=True)
    try:
        for line in server.stdout:
            m = re.match(r'listening on (http://\S+)', line)
            if m:
                url = m.group(1)
                break
        else:
            sys.exit('the server did not start')
        check(url, a, cli)
    finally:
        server.terminate()
        server.wait(timeout=30)


def check(url, a, cli):
    data = base64.b64encode(open(a.image, 'rb').read()).decode()
    name = os.path.basename(a.image)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=a.chromium, args=['--no-sandbox'])
        page = browser.new_page(viewport={'width': 900, 'height': 650})
        requests, failures = [], []
        page.on('request', lambda r: requests.append(r.url))
        page.on('requestfailed', lambda r: failures.append(r.url))
        page.goto(url + '/')
        page.wait_for_function("document.getElementById('model').textContent.includes('parameters')")
        page.evaluate("""([data, name]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const file = new File([bytes], name, { type: 'image/png' });
            const dt = new DataTransfer();
            dt.items.add(file);
            const zone = document.getElementById('drop');
            for (const type of ['dragenter', 'dragover', 'drop']) {
                zone.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
            }
        }""", [data, name])
        page.wait_for_selector('#bars .row')
        rows = page.eval_on_selector_all('#bars .row', """rows => rows.map(r => ({
            cls: r.dataset.class,
            width: parseFloat(r.querySelector('.bar').style.width),
            text: r.querySelector('.p').textContent }))""")
        shown = page.eval_on_selector('#preview', 'img => img.complete && img.naturalWidth > 0')
        boxes = {k: page.locator(k).bounding_box() for k in ['#model', '#drop', '#preview', '#bars']}
        model_line = page.text_content('#model')
        error = page.text_content('#error')
        page.screenshot(path=a.screenshot, full_page=True)
        why = None
        if a.why:
            page.check('#why')
            page.wait_for_function("(() => { const h = document.getElementById('heat');"
                                   " return !h.hidden && h.complete && h.naturalWidth > 0; })()")
            why = {
                'class': page.eval_on_selector('#heat', 'h => h.dataset.class'),
                'size': page.eval_on_selector('#heat', 'h => [h.naturalWidth, h.naturalHeight]'),
                'image': page.eval_on_selector('#preview', 'i => [i.naturalWidth, i.naturalHeight]'),
                'heat_box': page.locator('#heat').bounding_box(),
                'preview_box': page.locator('#preview').bounding_box(),
                'note': page.text_content('#whynote'),
            }
            page.screenshot(path=a.why_screenshot, full_page=True)
            page.uncheck('#why')
            why['hidden_after'] = page.eval_on_selector('#heat', 'h => h.hidden')
        browser.close()

    top1 = rows[0]['cls']
    print(f'model line: {model_line}')
    print('bars: ' + ', '.join(f"{r['cls']} {r['text']}" for r in rows))
    print(f'`resnet predict` top-1: {cli["class"]}; page top-1: {top1}')
    assert not error, f'the page shows an error: {error}'
    assert shown, 'the dropped image is not displayed'
    # Layout: the model line above the drop zone, the image (at least 200 px) left of the bars, below the zone.
    m, d, p, b = (boxes[k] for k in ['#model', '#drop', '#preview', '#bars'])
    assert m['y'] + m['height'] <= d['y'], ('the drop zone overlaps the model line', m, d)
    assert p['width'] >= 200 and p['height'] >= 200, ('the image is shown too small', p)
    assert d['y'] + d['height'] <= p['y'] and p['x'] + p['width'] <= b['x'], ('overlap', d, p, b)
    assert len(rows) == min(5, len(cli['probabilities'])), rows
    widths = [r['width'] for r in rows]
    assert widths == sorted(widths, reverse=True) and sum(widths) <= 100.5, widths
    assert top1 == cli['class'], (top1, cli['class'])
    assert [r['cls'] for r in rows] == [t['class'] for t in cli['top']], (rows, cli['top'])
    if a.expect_class:
        assert top1 == a.expect_class, (top1, a.expect_class)
    assert not failures, f'failed requests: {failures}'
    foreign = [u for u in requests if not u.startswith(url) and not u.startswith('blob:')]
    assert not foreign, f'fetched from elsewhere: {foreign}'
    if why:
        print(f"why?: {why['note']}; heatmap {why['size'][0]}×{why['size'][1]} over the image "
              f"{why['image'][0]}×{why['image'][1]}")
        assert why['class'] == top1, (why['class'], top1)
        assert why['size'] == why['image'], why
        assert why['heat_box'] == why['preview_box'], why
        assert why['hidden_after'], 'unticking "why?" leaves the heatmap shown'
        explained = json.loads(subprocess.run(
            [a.bin, 'predict', '--weights', a.weights, '--json', '--explain', os.path.dirname(a.why_screenshot) or '.',
             a.image], check=True, capture_output=True, text=True).stdout)['explain']
        assert explained['class'] == why['class'], (explained['class'], why['class'])
        print(f"why?: class {why['class']} as `resnet predict --explain`; screenshot: {a.why_screenshot}")
    print(f'PASS ({len(requests)} requests, all to {url}); screenshot: {a.screenshot}')


if __name__ == '__main__':
    main()
