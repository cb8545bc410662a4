"""Side-by-side 8x8 grids of the first 64 samples of each folder, with a label above each.

python scripts/quality/grids.py [--real-fmnist DIR] OUT.png LABEL=DIR [LABEL=DIR ...]

--real-fmnist DIR first writes the first 64 Fashion-MNIST test images (Debian's
dataset-fashion-mnist) into DIR as PNGs, so a panel can show the real data.
"""
import gzip
import sys
from pathlib import Path

from PIL import Image, ImageDraw


def grid(folder: Path, n: int = 8, pad: int = 2) -> Image.Image:
    files = sorted(p for p in folder.glob("[0-9]*.png"))[: n * n]
    tiles = [Image.open(f).convert("L") for f in files]
    w, h = tiles[0].size
    out = Image.new("L", (n * (w + pad) + pad, n * (h + pad) + pad), 255)
    for i, t in enumerate(tiles):
        out.paste(t, (pad + (i % n) * (w + pad), pad + (i // n) * (h + pad)))
    return out


def write_real(folder: Path, n: int = 64) -> None:
    raw = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()[16:]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.frombytes("L", (28, 28), raw[i * 784 : (i + 1) * 784]).save(folder / f"{i:06}.png")


def main() -> None:
    args = sys.argv[1:]
    if args[0] == "--real-fmnist":
        write_real(Path(args[1]))
        args = args[2:]
    out = Path(args[0])
    panels = []
    for arg in args[1:]:
        label, folder = arg.split("=", 1)
        g = grid(Path(folder)).resize((2 * 242, 2 * 242), Image.NEAREST)
        canvas = Image.new("L", (g.width, g.height + 24), 255)
        canvas.paste(g, (0, 24))
        ImageDraw.Draw(canvas).text((4, 6), label, fill=0)
        panels.append(canvas)
    gap = 12
    total = Image.new("L", (sum(p.width for p in panels) + gap * (len(panels) - 1), panels[0].height), 255)
    x = 0
    for p in panels:
        total.paste(p, (x, 0))
        x += p.width + gap
    total.save(out)


if __name__ == "__main__":
    main()
