"""Writes the seeded test images of ``benchmarks/opencv_versions.py``.

It runs inside the generator venv (pinned numpy + opencv, optional Pillow), not in this
repository's environment, so it uses nothing but those:

    python opencv_versions_generator.py OUT_DIR SEED

Every image comes from one ``numpy.random.RandomState(SEED)`` drawn in a fixed order, so
the same SEED and pinned versions give the same bytes. ``OUT_DIR/generator.json`` records
the versions used and whether Pillow could write the CMYK JPEG.
"""

import json
import os
import struct
import sys

import cv2
import numpy as np

# Name: (height, width, quality). ImageNet-like sizes, portrait and landscape, small
# images that are upscaled, a large one, extreme aspect ratios, odd sizes.
SIZES = {
    "land_500x375_q90": (375, 500, 90),
    "port_375x500_q90": (500, 375, 90),
    "land_500x333_q75": (333, 500, 75),
    "port_333x500_q95": (500, 333, 95),
    "land_640x480_q50": (480, 640, 50),
    "port_480x640_q100": (640, 480, 100),
    "square_256_q90": (256, 256, 90),
    "square_224_q85": (224, 224, 85),
    "small_200x150_q90": (150, 200, 90),
    "tiny_64x48_q90": (48, 64, 90),
    "big_2048x1536_q85": (1536, 2048, 85),
    "wide_1200x300_q90": (300, 1200, 90),
    "tall_240x1000_q80": (1000, 240, 80),
    "odd_257x259_q97": (259, 257, 97),
    "odd_513x301_q60": (301, 513, 60),
}
EXIF_ORIENTATIONS = (3, 6, 8)


def gradients(rs, h, w):
    """Per channel: a random sinusoid pattern over a diagonal ramp."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.empty((h, w, 3), np.float64)
    for c in range(3):
        fx, fy, ph = rs.uniform(1.5, 9.0), rs.uniform(1.5, 9.0), rs.uniform(0, 6.3)
        img[..., c] = (
            128
            + 70 * np.sin(2 * np.pi * fx * xx / w + ph) * np.cos(2 * np.pi * fy * yy / h)
            + 40 * (xx / w - yy / h)
        )
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_shapes(rs, img, count=12):
    """Random filled or outlined rectangles and anti-aliased circles, in place."""
    h, w = img.shape[:2]
    for _ in range(count):
        color = tuple(int(v) for v in rs.randint(0, 256, 3))
        x0, y0 = int(rs.randint(0, w)), int(rs.randint(0, h))
        x1, y1 = int(rs.randint(0, w)), int(rs.randint(0, h))
        if rs.rand() < 0.5:
            cv2.rectangle(img, (x0, y0), (x1, y1), color, int(rs.randint(-1, 6)) or -1)
        else:
            r = int(rs.randint(2, max(3, min(h, w) // 3)))
            cv2.circle(img, (x0, y0), r, color, int(rs.randint(-1, 6)) or -1, cv2.LINE_AA)


def draw_label(img):
    """The image's size as anti-aliased text, in place."""
    h, w = img.shape[:2]
    cv2.putText(
        img,
        f"MLPerf {w}x{h}",
        (w // 10, h // 2),
        cv2.FONT_HERSHEY_SIMPLEX,
        max(0.3, w / 600),
        (250, 250, 250),
        max(1, w // 300),
        cv2.LINE_AA,
    )


def draw_checkerboard(rs, img):
    """A one-pixel checkerboard over a quarter of each side, at a random place, in place."""
    h, w = img.shape[:2]
    cy, cx = int(rs.randint(0, max(1, h - h // 4))), int(rs.randint(0, max(1, w - w // 4)))
    ch, cw = h // 4, w // 4
    check = ((np.indices((ch, cw)).sum(axis=0) % 2) * 255).astype(np.uint8)
    img[cy : cy + ch, cx : cx + cw] = check[..., None]


def content(rs, h, w):
    """Smooth gradients, sinusoids, sharp shapes, text, a fine checkerboard, noise."""
    img = gradients(rs, h, w)
    draw_shapes(rs, img)
    draw_label(img)
    draw_checkerboard(rs, img)
    noise = rs.normal(0, 10, img.shape)
    return np.clip(img.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def write_bytes(out_dir, name, data):
    with open(os.path.join(out_dir, name), "wb") as f:
        f.write(data)


def write_encoded(out_dir, name, img, params=()):
    """Encode ``img`` in the format ``name``'s extension says; the bytes written."""
    ok, buf = cv2.imencode(os.path.splitext(name)[1], img, list(params))
    write_bytes(out_dir, name, buf.tobytes())
    return ok, buf.tobytes()


def jpeg(rs, out_dir, name, h, w, quality=90, extra=()):
    ok, data = write_encoded(
        out_dir, name, content(rs, h, w), [cv2.IMWRITE_JPEG_QUALITY, quality] + list(extra)
    )
    assert ok
    return data


def exif_segment(orientation):
    """APP1 'Exif' with a big-endian TIFF IFD holding only Orientation (0x0112)."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def with_exif(data, orientation):
    assert data[:2] == b"\xff\xd8"
    pos = 2
    if data[2:4] == b"\xff\xe0":  # keep JFIF APP0 first
        pos = 4 + struct.unpack(">H", data[4:6])[0]
    return data[:pos] + exif_segment(orientation) + data[pos:]


def write_jpeg_variants(rs, out_dir):
    """The sized baseline JPEGs, then progressive, optimized and 4:4:4 ones."""
    for name, (h, w, q) in SIZES.items():
        jpeg(rs, out_dir, name + ".jpg", h, w, q)
    jpeg(
        rs, out_dir, "progressive_500x375_q90.jpg", 375, 500, 90, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    )
    jpeg(rs, out_dir, "optimized_375x500_q90.jpg", 500, 375, 90, [cv2.IMWRITE_JPEG_OPTIMIZE, 1])
    if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
        sampling = [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        jpeg(rs, out_dir, "sampling444_500x375_q95.jpg", 375, 500, 95, sampling)


def write_other_layouts(rs, out_dir):
    """A grayscale JPEG, a PNG with alpha and an RGB PNG."""
    gray = content(rs, 400, 300)[..., 1]
    write_encoded(out_dir, "gray_300x400_q90.jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 90])
    bgra = np.dstack([content(rs, 333, 500), rs.randint(0, 256, (333, 500)).astype(np.uint8)])
    bgra[:100, :, 3] = 0  # fully transparent band: imread drops alpha, keeps the colour
    write_encoded(out_dir, "alpha_500x333.png", bgra)
    write_encoded(out_dir, "rgb_420x300.png", content(rs, 300, 420))


def write_exif_orientations(rs, out_dir):
    """One JPEG, and copies of it whose EXIF Orientation tag says 3, 6 and 8."""
    base = jpeg(rs, out_dir, "exif_base_500x375_q90.jpg", 375, 500, 90)
    for orientation in EXIF_ORIENTATIONS:
        name = f"exif_orient{orientation}_500x375_q90.jpg"
        write_bytes(out_dir, name, with_exif(base, orientation))


def write_cmyk(rs, out_dir):
    """A CMYK JPEG through Pillow; the note for generator.json's "pillow"."""
    try:
        from PIL import Image

        rgb = cv2.cvtColor(content(rs, 375, 500), cv2.COLOR_BGR2RGB)
        Image.fromarray(rgb).convert("CMYK").save(
            os.path.join(out_dir, "cmyk_500x375_q90.jpg"), quality=90
        )
        import PIL

        return PIL.__version__
    except ImportError as err:
        return f"not importable ({err}): no CMYK JPEG"


def main(argv):
    out_dir, seed = argv[0], int(argv[1])
    os.makedirs(out_dir, exist_ok=True)
    rs = np.random.RandomState(seed)
    write_jpeg_variants(rs, out_dir)
    write_other_layouts(rs, out_dir)
    write_exif_orientations(rs, out_dir)
    notes = {"pillow": write_cmyk(rs, out_dir)}
    notes["generator_opencv"] = cv2.__version__
    notes["generator_numpy"] = np.__version__
    notes["seed"] = seed
    with open(os.path.join(out_dir, "generator.json"), "w") as f:
        json.dump(notes, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
