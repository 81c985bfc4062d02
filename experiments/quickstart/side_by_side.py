"""Two sample grids side by side with a gap, as one PNG (the README's before/after picture).

    python experiments/quickstart/side_by_side.py runs/ablation/base/samples/final.png \
        runs/quickstart/samples/final.png experiments/quickstart/before-after.png
"""

import sys

from PIL import Image


def side_by_side(left: str, right: str, out: str, gap: int = 24) -> None:
    a, b = Image.open(left).convert("RGB"), Image.open(right).convert("RGB")
    canvas = Image.new("RGB", (a.width + gap + b.width, max(a.height, b.height)), "white")
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width + gap, 0))
    canvas.save(out)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: side_by_side.py LEFT.png RIGHT.png OUT.png")
    side_by_side(*sys.argv[1:])
