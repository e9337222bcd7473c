"""ADE20K-847 (ADE20K-full) validation images and label maps from the ADE20K_2021_17_01 release.

The layout written is the one SAN / CAT-Seg evaluate (their detectron2 registration
`ade20k_full_sem_seg_freq_val_all`), so folders they prepared are read the same way:

    <out>/images_detectron2/validation/ADE_val_XXXXXXXX.jpg
    <out>/annotations_detectron2/validation/ADE_val_XXXXXXXX.tif   16-bit, classes 0..846, 65535 = no label

From each `images/ADE/validation/<scene folders>/ADE_val_XXXXXXXX.jpg` and its `..._seg.png`:
the object class of a pixel is (R // 10) * 256 + G of the seg PNG; the 847 evaluated classes
are ADE object classes, in CAT-Seg's trainId order (ADE_CLASS_IDS; the names are
benchmarks/classes/catseg/ade847.txt); every other object class and unlabelled pixels become
65535. An image whose short side exceeds 512 is resized so that side is 512 (the long side
rounded with Python's round), the image with OpenCV's INTER_LINEAR and the label map with
INTER_NEAREST; every image is written again as a JPEG with Pillow's defaults (quality 75),
as CAT-Seg's datasets/prepare_ade20k_full.py does, so the evaluated pixels are the same.

Each file is written through a temporary file and a rename; the manifest
(ade847_validation_manifest.json in out) is written last: a folder with the manifest is complete.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from silc_eval.core.errors import UserError
from silc_eval.core.io import atomic_write_bytes, atomic_write_json
from silc_eval.core.labels import WIDE_IGNORE_INDEX

IMAGES = Path("images_detectron2") / "validation"
ANNOTATIONS = Path("annotations_detectron2") / "validation"
SUFFIX = ".tif"
MAX_SHORT_SIDE = 512
RAW_IMAGES = Path("images") / "ADE" / "validation"
RAW_LAYOUT = ("images/ADE/validation/<scene folders>/ADE_val_XXXXXXXX.jpg, each with ADE_val_XXXXXXXX_seg.png "
              "beside it (the ADE20K_2021_17_01 release)")
# ADE object class id (as decoded from a seg PNG) of each evaluated class, index = class id 0..846.
ADE_CLASS_IDS = (
    2978, 312, 2420, 2855, 2131, 976, 447, 165, 2377, 838, 350, 1831, 1125, 3055, 401, 1610, 1910, 2684, 471,
    687, 774, 2473, 2264, 1735, 2994, 1564, 1276, 2178, 2329, 57, 907, 913, 1395, 2138, 2272, 2128, 724, 155,
    2053, 2380, 689, 1788, 3087, 2530, 581, 2388, 2985, 2454, 2096, 137, 294, 212, 2185, 524, 2212, 943, 1869,
    2251, 2793, 2423, 1121, 266, 1948, 1744, 783, 571, 627, 629, 491, 1374, 223, 3016, 2598, 978, 239, 608, 236,
    2531, 2616, 591, 327, 2679, 1451, 181, 420, 2821, 1023, 855, 2733, 2928, 1240, 77, 1969, 2880, 14, 1936,
    2828, 631, 103, 3144, 308, 1282, 38, 1563, 29, 480, 2569, 247, 187, 778, 2243, 1941, 2833, 120, 95, 2836,
    1087, 868, 1401, 220, 47, 843, 123, 2537, 1927, 2337, 1702, 64, 249, 642, 1981, 609, 2840, 2586, 1393, 2704,
    1304, 146, 1494, 2739, 389, 1551, 131, 738, 161, 747, 1919, 3109, 2179, 2989, 206, 1930, 1002, 2254, 1708,
    2526, 160, 2901, 2262, 44, 597, 2235, 1260, 682, 2151, 3107, 432, 1098, 2932, 461, 410, 2046, 533, 1481,
    1858, 894, 1322, 1891, 1756, 49, 1272, 1229, 2850, 1784, 2962, 259, 319, 954, 1974, 1013, 2356, 97, 318,
    592, 2885, 1017, 851, 1407, 1332, 303, 2714, 1924, 1346, 1081, 1583, 2727, 2509, 2123, 602, 202, 10, 490,
    530, 2213, 1884, 2934, 2687, 387, 2668, 982, 2547, 1474, 877, 1391, 414, 698, 2019, 2422, 3010, 1139, 753,
    1747, 2175, 1301, 1033, 1789, 2939, 2730, 1652, 90, 1349, 2830, 1485, 2370, 2155, 118, 1402, 1957, 3130,
    1197, 52, 2688, 96, 762, 772, 1857, 2315, 1016, 643, 3105, 1849, 791, 349, 6, 3114, 1587, 1233, 559, 1223,
    3049, 1943, 853, 709, 1390, 2748, 2007, 1546, 1513, 2600, 2538, 1790, 194, 326, 2877, 594, 2036, 1662, 2366,
    1754, 418, 2553, 1951, 1963, 918, 2086, 997, 2731, 704, 1365, 569, 3108, 948, 839, 63, 1305, 378, 2362,
    2734, 2982, 2398, 1119, 382, 1141, 1805, 3102, 2341, 1131, 2316, 2626, 3104, 198, 1896, 2800, 190, 3131,
    1463, 357, 929, 209, 912, 1164, 1509, 2539, 3116, 2615, 1644, 818, 242, 2217, 2347, 2686, 2300, 572, 789,
    358, 2443, 101, 2969, 2692, 606, 2339, 1533, 2060, 1782, 495, 371, 2707, 889, 3156, 2683, 1499, 1135, 1619,
    125, 2838, 2792, 1695, 746, 1343, 1370, 2858, 145, 2565, 1892, 1103, 286, 170, 3073, 922, 1655, 1602, 2160,
    1151, 2176, 2239, 132, 394, 1424, 607, 700, 116, 1425, 2676, 141, 2360, 2449, 897, 317, 2228, 2351, 1543,
    656, 1088, 373, 2472, 2892, 1740, 3067, 1367, 188, 79, 1633, 1885, 677, 1779, 1297, 2334, 3027, 2735, 1791,
    2405, 1748, 2983, 3035, 2824, 2168, 385, 2148, 2465, 175, 390, 268, 2722, 2857, 3088, 2926, 2782, 1378,
    1934, 2072, 2889, 944, 1158, 1383, 867, 2145, 1915, 361, 402, 482, 2761, 300, 1554, 636, 260, 1186, 871,
    2859, 2103, 208, 2236, 2012, 2462, 1462, 2832, 2617, 1024, 1129, 18, 376, 134, 407, 434, 2017, 2717, 2005,
    2993, 1545, 1445, 2831, 1161, 2411, 2949, 1769, 552, 2327, 939, 3013, 1986, 1486, 2723, 1549, 2649, 1020,
    392, 422, 1419, 2099, 2464, 3058, 430, 675, 2941, 2955, 2355, 840, 32, 2338, 1232, 2834, 2991, 2879, 444,
    1657, 2246, 296, 245, 2661, 1202, 1714, 251, 1095, 1828, 311, 2732, 947, 2115, 2738, 2525, 2194, 634, 740,
    2682, 2020, 1156, 1036, 1295, 1181, 3037, 1614, 736, 893, 2047, 1274, 1361, 3036, 2606, 2797, 2022, 2876,
    2758, 472, 3028, 882, 1189, 743, 3122, 2401, 468, 1061, 1523, 3059, 2843, 2853, 1529, 214, 3032, 3071, 277,
    813, 426, 1039, 727, 1508, 2490, 2299, 768, 1172, 537, 1847, 1664, 1110, 1014, 662, 121, 227, 2410, 2165,
    2696, 3005, 1231, 635, 292, 2690, 65, 2607, 2574, 1188, 456, 2913, 459, 1955, 827, 1111, 2412, 2997, 528,
    366, 1863, 500, 1001, 1958, 1441, 809, 210, 435, 718, 1674, 388, 1572, 1584, 1944, 674, 99, 2352, 1019,
    1763, 185, 554, 1066, 2508, 951, 2822, 415, 297, 1914, 2619, 1338, 2505, 955, 2786, 238, 3000, 2763, 299,
    822, 1288, 3101, 2894, 992, 489, 2157, 2309, 1576, 1810, 2964, 2662, 2087, 1569, 503, 1505, 1468, 1613,
    1138, 1256, 2715, 2846, 477, 2576, 108, 2245, 1162, 2149, 2183, 858, 1324, 1055, 1741, 149, 615, 825, 2143,
    304, 283, 2322, 3017, 2510, 1960, 265, 2282, 2184, 1461, 3113, 2372, 2166, 232, 693, 1945, 3039, 2494, 1908,
    2827, 280, 2950, 1044, 288, 2863, 1342, 2409, 1258, 2249, 2862, 920, 1607, 2802, 610, 3129, 1108, 2823, 476,
    2641, 2788, 2070, 1368, 2903, 699, 2844, 942, 2663, 457, 2701, 2540, 2231, 2746, 1738, 2350, 2808, 2025,
    2541, 2156, 126, 2512, 831, 2503, 2039, 2774, 886, 919, 2240, 2636, 963, 1218, 1406, 1420, 526, 2639, 975,
    1921, 2305, 1193, 2517, 2809, 1647, 314, 2560, 545, 1345, 775, 603, 1163, 1641, 1678, 2450, 2915, 42, 2242,
    2741, 1143, 862, 1654, 1826, 1689, 3124, 2710, 152, 549, 360, 1982, 1478, 2203, 2612, 2956, 2681, 437, 2171,
    1933, 3110, 1824, 2803, 234, 764, 177, 817, 3145, 1262, 864, 2359, 2992, 1725, 2667, 2484, 1133, 1667, 2847,
    932, 1392, 2573, 2140, 1046, 264, 2927, 2752, 679, 2493, 1658, 2466, 1057, 2444, 2093, 2248, 2432, 726, 816,
    1171, 2766, 2900, 2313, 488, 2265, 2043, 332, 1771, 2320, 2646, 1089, 2826, 3148
)


def manifest_path(out: Path) -> Path:
    """Return the path of the manifest that marks a finished ADE-847 validation set in out."""
    return Path(out) / "ade847_validation_manifest.json"


def class_lookup() -> np.ndarray:
    """Return the uint16 table from ADE object class id to class id 0..846 (65535 for every other id)."""
    lookup = np.full(max(ADE_CLASS_IDS) + 1, WIDE_IGNORE_INDEX, dtype=np.uint16)
    lookup[list(ADE_CLASS_IDS)] = np.arange(len(ADE_CLASS_IDS), dtype=np.uint16)
    return lookup


def object_classes(seg: np.ndarray) -> np.ndarray:
    """Return the int32 ADE object class map of an RGB seg PNG's pixels (H, W, 3): (R // 10) * 256 + G."""
    return (seg[..., 0].astype(np.int32) // 10) * 256 + seg[..., 1].astype(np.int32)


def label_map(objects: np.ndarray) -> np.ndarray:
    """Return the uint16 class map (0..846, 65535 elsewhere) of an ADE object class map."""
    lookup = class_lookup()
    known = (objects >= 0) & (objects < len(lookup))
    out = np.full(objects.shape, WIDE_IGNORE_INDEX, dtype=np.uint16)
    out[known] = lookup[objects[known]]
    return out


def resized_size(height: int, width: int, max_short: int = MAX_SHORT_SIDE) -> tuple[int, int] | None:
    """Return the (height, width) an image is resized to (its short side max_short), or None when it stays."""
    if width >= height > max_short:
        return max_short, round(width / float(height) * max_short)
    if height >= width > max_short:
        return round(height / float(width) * max_short), max_short
    return None


def validation_images(source: Path) -> list[Path]:
    """Return the validation images of an ADE20K_2021_17_01 folder (names ADE_val_*.jpg), sorted by name."""
    folder = Path(source) / RAW_IMAGES
    if not folder.is_dir():
        raise UserError(f"ADE20K-full validation images not found: expected {folder} (layout under {source}: "
                        f"{RAW_LAYOUT})")
    images = sorted((p for p in folder.rglob("*.jpg") if p.is_file() and p.name.split("_")[1:2] == ["val"]),
                    key=lambda p: p.name)
    if not images:
        raise UserError(f"no ADE_val_*.jpg under {folder}; expected {RAW_LAYOUT}")
    names = [p.name for p in images]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{repeated[0]} appears in several folders under {folder}; expected each image once")
    missing = [p for p in images if not seg_path(p).is_file()]
    if missing:
        raise UserError(f"{seg_path(missing[0])} not found ({len(missing)} of {len(images)} images lack their "
                        f"_seg.png); expected {RAW_LAYOUT}")
    return images


def seg_path(image: Path) -> Path:
    """Return the class-and-instance PNG of an ADE20K-full image (<stem>_seg.png beside it)."""
    return image.with_name(f"{image.stem}_seg.png")


def _opencv():
    try:
        import cv2
    except ImportError:
        raise UserError("data prepare ade847 needs OpenCV to resize as CAT-Seg's prepare script does (pip install "
                        "opencv-python-headless, or the 'reference' extra); expected 'import cv2' to work") from None
    return cv2


def _read(path: Path, seg: bool = False) -> np.ndarray:
    """Return the pixels of an image (as stored when RGB or grey, else converted to RGB) or of a seg PNG (its R, G
    and B channels; any other mode is a UserError)."""
    try:
        with Image.open(path) as img:
            if seg:
                if img.mode not in ("RGB", "RGBA"):
                    raise UserError(f"{path} is a {img.mode}-mode image; expected ADE20K-full's colour-coded "
                                    f"_seg.png in RGB (object class (R // 10) * 256 + G)")
                return np.asarray(img)[..., :3]
            return np.asarray(img if img.mode in ("RGB", "L") else img.convert("RGB"))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def convert(image_path: Path, cv2) -> tuple[np.ndarray, np.ndarray, bool]:
    """Return (the image array to write, its uint16 label map, whether it was resized) of one ADE20K-full
    validation image."""
    image = _read(image_path)
    seg = _read(seg_path(image_path), seg=True)
    if seg.shape[:2] != image.shape[:2]:
        raise UserError(f"{seg_path(image_path)} is {seg.shape[1]}x{seg.shape[0]} but {image_path} is "
                        f"{image.shape[1]}x{image.shape[0]}; expected the same size")
    objects = object_classes(seg)
    size = resized_size(*image.shape[:2])
    if size is not None:
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        objects = cv2.resize(objects, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return image, label_map(objects), size is not None


def _encoded(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def prepare_ade847(source: Path, out: Path | None = None, progress: bool = False) -> int:
    """Write the ADE-847 validation images and label maps of an ADE20K_2021_17_01 folder into out (default: the
    same folder); returns the number of images."""
    source = Path(source)
    out = Path(out) if out is not None else source
    images = validation_images(source)
    cv2 = _opencv()
    manifest_path(out).unlink(missing_ok=True)  # a manifest only ever describes a finished run
    iterator = images
    if progress:
        from tqdm import tqdm

        iterator = tqdm(images, desc="ADE-847 validation", unit="image", file=sys.stderr)
    resized = 0
    for image_path in iterator:
        image, labels, was_resized = convert(image_path, cv2)
        resized += was_resized
        atomic_write_bytes(out / IMAGES / image_path.name, _encoded(image, "JPEG"))
        atomic_write_bytes(out / ANNOTATIONS / f"{image_path.stem}{SUFFIX}", _encoded(labels, "TIFF"))
    atomic_write_json(manifest_path(out), {
        "split": "validation", "images": len(images), "resized": int(resized), "max_short_side": MAX_SHORT_SIDE,
        "source": str(source / RAW_IMAGES), "num_classes": len(ADE_CLASS_IDS), "ignore": WIDE_IGNORE_INDEX,
        "images_folder": str(IMAGES), "annotations_folder": str(ANNOTATIONS), "suffix": SUFFIX,
        "class_ids": list(ADE_CLASS_IDS),
    })
    return len(images)
