"""Tables of the FLAIR-HUB modalities, tasks, classes, colours and splits.

Every official identifier (folder suffix, CSV column, checkpoint key) lives here as an enum
value, so the rest of the code never derives one key from another by string surgery.
Facts come from ``shared/flairhub-format.md`` (section numbers in comments).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

#: Side of every patch on the ground, in metres (spec section 2).
PATCH_SIZE_M = 102.4
#: Lambert-93, the CRS of the dataset (spec section 2, inferred).
DEFAULT_CRS = "EPSG:2154"
#: Reference day for Sentinel day offsets, "MM-DD" (spec section 3.1).
DEFAULT_REFERENCE_DATE = "05-15"


class Modality(str, Enum):
    """A folder suffix of the official layout (spec section 1.2); the value is the official key."""

    AERIAL_RGBI = "AERIAL_RGBI"
    AERIAL_PAN = "AERIAL-RLT_PAN"
    DEM_ELEV = "DEM_ELEV"
    SPOT_RGBI = "SPOT_RGBI"
    SENTINEL2_TS = "SENTINEL2_TS"
    SENTINEL2_MSK = "SENTINEL2_MSK-SC"
    SENTINEL1_ASC_TS = "SENTINEL1-ASC_TS"
    SENTINEL1_DESC_TS = "SENTINEL1-DESC_TS"
    COSIA = "AERIAL_LABEL-COSIA"
    LPIS = "ALL_LABEL-LPIS"

    def __str__(self) -> str:
        return self.value

    @property
    def spec(self) -> ModalitySpec:
        """The static description of this modality."""
        return MODALITY_SPECS[self]

    @classmethod
    def parse(cls, name: str) -> Modality:
        """Look a modality up by official key, enum name or alias (case-insensitive).

        Raises:
            ValueError: the name matches no modality; the message lists the valid ones.
        """
        key = name.strip().upper()
        for m in cls:
            if key in (m.value.upper(), m.name.upper()) or key in m.spec.aliases:
                return m
        valid = ", ".join(f"{m.value} ({'/'.join(m.spec.aliases)})" for m in cls)
        raise ValueError(f"unknown modality {name!r}; valid: {valid}")

    def band_indices(self, names: Sequence[str]) -> list[int]:
        """0-based positions of bands in this modality's files, looked up by name.

        ``Modality.AERIAL_RGBI.band_indices(("NIR", "R", "G"))`` is ``[3, 0, 1]``. For a time
        series the positions are within one date.

        Raises:
            ValueError: a name is not a band of this modality; the message lists the valid ones.
        """
        bands = self.spec.bands
        unknown = [n for n in names if n not in bands]
        if unknown:
            raise ValueError(f"{self.value}: unknown band(s) {unknown}; valid: {list(bands)}")
        return [bands.index(n) for n in names]


class Task(str, Enum):
    """A supervised task; the value is the label modality's official key."""

    COSIA = "AERIAL_LABEL-COSIA"
    LPIS = "ALL_LABEL-LPIS"

    @property
    def modality(self) -> Modality:
        """The label modality that holds this task's targets."""
        return Modality(self.value)


@dataclass(frozen=True)
class ModalitySpec:
    """What a modality's files look like on disk.

    Attributes:
        bands: channel names per date, in file order (1-based band k is ``bands[k-1]``).
        native_gsd_m: pixel size of the real dataset, metres.
        native_px: patch side in pixels in the real dataset.
        dtypes: accepted on-disk dtypes; ``None`` means any numeric dtype (the spec does not know).
        is_time_series: bands are ``T * len(bands)``, date-major (spec section 2.2).
        is_input: fed to a model (labels and the S2 mask are not).
        dates_gpkg: file in ``GLOBAL_ALL_MTD/`` holding the acquisition dates, if any.
        aliases: short names accepted on the command line.
    """

    bands: tuple[str, ...]
    native_gsd_m: float
    native_px: int
    dtypes: tuple[str, ...] | None
    is_time_series: bool = False
    is_input: bool = True
    dates_gpkg: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def num_bands(self) -> int:
        """Channels per date (or bands, for a mono-temporal modality)."""
        return len(self.bands)

    def accepts_dtype(self, dtype: np.dtype | str) -> bool:
        """Whether files of this dtype are valid for the modality."""
        dt = np.dtype(dtype)
        if self.dtypes is None:
            return dt.kind in "uif"
        return dt.name in self.dtypes


MODALITY_SPECS: dict[Modality, ModalitySpec] = {
    Modality.AERIAL_RGBI: ModalitySpec(
        ("R", "G", "B", "NIR"), 0.2, 512, ("uint8",), aliases=("AERIAL", "RGBI")
    ),
    # PAN: 256 px at 0.4 m is inferred (spec section 11.6): the reader never assumes a size.
    Modality.AERIAL_PAN: ModalitySpec(
        ("PAN",), 0.4, 256, ("uint8",), aliases=("PAN", "HISTORICAL")
    ),
    Modality.DEM_ELEV: ModalitySpec(
        ("DSM", "DTM"), 0.2, 512, ("float32", "float64"), aliases=("DEM",)
    ),
    # SPOT, S2, S2 mask and S1 dtypes are inferred by the spec (section 11.2): accept any numeric.
    Modality.SPOT_RGBI: ModalitySpec(("R", "G", "B", "NIR"), 1.6, 64, None, aliases=("SPOT",)),
    Modality.SENTINEL2_TS: ModalitySpec(
        ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"),
        10.24,
        10,
        None,
        is_time_series=True,
        dates_gpkg="GLOBAL_SENTINEL2_MTD_DATES.gpkg",
        aliases=("S2", "SENTINEL2"),
    ),
    Modality.SENTINEL2_MSK: ModalitySpec(
        ("SNOW", "CLOUD"),
        10.24,
        10,
        None,
        is_time_series=True,
        is_input=False,
        dates_gpkg="GLOBAL_SENTINEL2_MTD_DATES.gpkg",
        aliases=("S2MASK", "S2_MASK", "MASK"),
    ),
    Modality.SENTINEL1_ASC_TS: ModalitySpec(
        ("VV", "VH"),
        10.24,
        10,
        None,
        is_time_series=True,
        dates_gpkg="GLOBAL_SENTINEL1-ASC_MTD_DATES.gpkg",
        aliases=("S1ASC", "S1-ASC", "S1_ASC"),
    ),
    Modality.SENTINEL1_DESC_TS: ModalitySpec(
        ("VV", "VH"),
        10.24,
        10,
        None,
        is_time_series=True,
        dates_gpkg="GLOBAL_SENTINEL1-DESC_MTD_DATES.gpkg",
        aliases=("S1DESC", "S1-DESC", "S1_DESC"),
    ),
    Modality.COSIA: ModalitySpec(
        ("CLASS",), 0.2, 512, ("uint8", "uint16"), is_input=False, aliases=("LC", "LABEL-COSIA")
    ),
    Modality.LPIS: ModalitySpec(
        ("LEVEL1", "LEVEL2", "LEVEL3"),
        0.2,
        512,
        ("uint8", "uint16"),
        is_input=False,
        aliases=("CROP", "LABEL-LPIS"),
    ),
}

#: The seven model inputs of the benchmark (S1 counts as two).
INPUT_MODALITIES: tuple[Modality, ...] = tuple(m for m in Modality if m.spec.is_input)
TIME_SERIES_INPUTS: tuple[Modality, ...] = tuple(
    m for m in INPUT_MODALITIES if m.spec.is_time_series
)
LABEL_MODALITIES: tuple[Modality, ...] = (Modality.COSIA, Modality.LPIS)

#: Global metadata folder and files (spec section 1.5).
METADATA_DIR = "GLOBAL_ALL_MTD"
SPLIT_GPKG = "GLOBAL_ALL_MTD_SPLIT.gpkg"
SINGLE_DATE_GPKGS: dict[Modality, str] = {
    Modality.AERIAL_RGBI: "GLOBAL_AERIAL_MTD_DATES.gpkg",
    Modality.AERIAL_PAN: "GLOBAL_AERIAL-RLT_MTD_DATES.gpkg",
    Modality.SPOT_RGBI: "GLOBAL_SPOT_MTD_DATES.gpkg",
}
#: The historical imagery replaces the survey year by this literal (spec section 1.1).
HISTORICAL_YEAR = "195X"


@dataclass(frozen=True)
class ClassInfo:
    """One class of a nomenclature."""

    value: int
    name: str
    colour: str  # "#rrggbb"


def _classes(rows: list[tuple[str, str]]) -> tuple[ClassInfo, ...]:
    return tuple(ClassInfo(i, name, colour) for i, (name, colour) in enumerate(rows))


#: COSIA land cover, 19 classes with the FLAIR palette (spec section 4.1).
COSIA_CLASSES = _classes(
    [
        ("building", "#db0e9a"),
        ("greenhouse", "#9999ff"),
        ("swimming pool", "#3de6eb"),
        ("impervious surface", "#f80c00"),
        ("pervious surface", "#938e7b"),
        ("bare soil", "#a97101"),
        ("water", "#1553ae"),
        ("snow", "#ffffff"),
        ("herbaceous vegetation", "#55ff00"),
        ("agricultural land", "#fff30d"),
        ("plowed land", "#e4df7c"),
        ("vineyard", "#660082"),
        ("deciduous", "#46e483"),
        ("coniferous", "#194a26"),
        ("brushwood", "#f3a60d"),
        ("clear cut", "#8ab3a0"),
        ("ligneous", "#c5dc42"),
        ("mixed", "#6b714f"),
        ("undefined", "#000000"),
    ]
)
#: Classes the benchmark gives weight 0 and drops from its 15-class scores (spec section 4.1).
COSIA_IGNORED = (15, 16, 17, 18)

#: LPIS level 1, 23 classes (spec section 4.2).
LPIS_L1_CLASSES = _classes(
    [
        ("grasses", "#92d050"),
        ("wheat", "#d7e600"),
        ("barley", "#e0e000"),
        ("maize", "#fff100"),
        ("other cereals", "#ffff00"),
        ("rice", "#e8e8e8"),
        ("flax/hemp/tobacco", "#dceaf7"),
        ("sunflower", "#d29ead"),
        ("rapeseed", "#d29ed0"),
        ("other oilseed crops", "#ffbe99"),
        ("soy", "#ffc000"),
        ("other protein crops", "#ff9000"),
        ("fodder legumes", "#009999"),
        ("beetroots", "#808000"),
        ("potatoes", "#a7a700"),
        ("other arable crops", "#89896d"),
        ("vineyard", "#f2cfee"),
        ("olive groves", "#6f6633"),
        ("fruit orchards", "#ac8141"),
        ("nut orchards", "#996633"),
        ("other permanent crops", "#80c1d7"),
        ("mixed crops", "#000000"),
        ("background", "#000000"),
    ]
)
#: Candidates for the two LPIS classes the benchmark removes; unverified (spec section 4.2).
LPIS_IGNORED_CANDIDATES = (21, 22)
#: Class counts per LPIS level (spec section 4.2). Level 2/3 names are not in the spec.
LPIS_NUM_CLASSES = {1: 23, 2: 31, 3: 46}


def class_table(task: Task, level: int = 1) -> tuple[ClassInfo, ...]:
    """The classes of a task; LPIS levels 2 and 3 get numbered names (the spec lists no names)."""
    if task is Task.COSIA:
        return COSIA_CLASSES
    if level == 1:
        return LPIS_L1_CLASSES
    if level not in LPIS_NUM_CLASSES:
        raise ValueError(f"LPIS level must be 1, 2 or 3, got {level}")
    return tuple(
        ClassInfo(i, f"level{level} class {i}", "#808080") for i in range(LPIS_NUM_CLASSES[level])
    )


#: Official split_1 (dataset card): test domains; every other domain is train/val (spec 3.2).
TEST_DOMAINS = frozenset(
    "D012 D015 D022 D026 D036 D061 D064 D068 D069 D071 D073 D075 D076 D083 D084 D085".split()
)
TRAINVAL_DOMAINS = frozenset(
    (
        "D004 D005 D006 D007 D008 D009 D010 D011 D013 D014 D016 D017 D018 D020 D021 D023 "
        "D024047 D025039 D029 D030 D031 D032 D033 D034 D035 D037 D038 D040 D041 D044 D045 D046 "
        "D049 D051 D052 D054057 D055 D056 D058 D059062 D060 D063 D065 D066 D067 D070 D072 D074 "
        "D077 D078 D080 D081 D086 D091"
    ).split()
)

#: Split names used in the API; the GeoPackage writes "valid" for "val" (spec section 1.5).
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "valid": "val",
    "val": "val",
    "validation": "val",
    "test": "test",
}

#: Normalisation statistics per band name (spec section 5.1). Reference-config values where the
#: reference normalises the band, the paper's otherwise. SPOT uses the LC-I model card's
#: NIR/R/G mapping (spec section 10, contradiction 1). S2 and S1 are never normalised by the
#: benchmark, so they have no entry: their default is no normalisation.
NORM_STATS: dict[Modality, dict[str, tuple[float, float]]] = {
    Modality.AERIAL_RGBI: {
        "R": (105.66, 52.23),
        "G": (111.35, 45.62),
        "B": (102.09, 44.39),  # paper value: the reference never feeds B
        "NIR": (106.59, 39.78),
    },
    Modality.AERIAL_PAN: {"PAN": (125.92, 38.45)},
    Modality.SPOT_RGBI: {
        "R": (433.26, 312.76),
        "G": (508.75, 284.61),
        "B": (467.77, 226.02),
        "NIR": (1137.09, 543.11),
    },
    # One mean/std for both channels so elevation differences survive (spec section 5.1).
    Modality.DEM_ELEV: {
        "DSM": (311.06, 537.55),
        "DTM": (311.06, 537.55),
        "HEIGHT": (311.06, 537.55),
    },
}

#: Default channel selection of the benchmark (spec section 5.1), by band name.
DEFAULT_BANDS: dict[Modality, tuple[str, ...]] = {
    Modality.AERIAL_RGBI: ("NIR", "R", "G"),
    Modality.SPOT_RGBI: ("NIR", "R", "G"),
}


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    """Convert ``"#rrggbb"`` to an (r, g, b) tuple of ints."""
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)
