"""PLINK 2 (.pgen/.pvar/.psam, through pgenlib) and PLINK 1 (.bed/.bim/.fam, through bed-reader).

Both libraries decode the 2-bit genotype blocks in C, for a range or a list of variants at a
time, so a block of variants x 60,000 samples costs one call, never a Python loop over samples.
The text sidecars (.pvar/.bim, .psam/.fam) are read with pyarrow's CSV reader: a million-variant
.pvar is a second. Dosage counts PLINK 2's ALT and PLINK 1's A1 (column 5 of the .bim, as
``plink --recode A`` does); REF is the other allele (.bim column 6).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyarrow import csv

from medweave.data.readers.genotypes import VariantTable, normalise_chrom, selected_blocks
from medweave.errors import MedweaveError

PLINK2 = (".pgen", ".pvar", ".psam")
PLINK1 = (".bed", ".bim", ".fam")


def _header_lines(path: Path, mark: bytes = b"##") -> int:
    """Leading meta lines ("##...") before the column header."""
    n = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.startswith(mark):
                break
            n += 1
    return n


def _whitespace_table(path: Path, width: int, what: str) -> list[list[str]]:
    """.bim/.fam: whitespace-separated (tabs or spaces, as PLINK 1 accepts)."""
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise MedweaveError(f"{path}: not a readable {what} ({err})") from None
    for n, row in enumerate(rows):
        if len(row) < width:
            raise MedweaveError(f"{path}: line {n + 1} has {len(row)} fields; expected {width} ({what})")
    return rows


def read_pvar(path: Path) -> VariantTable:
    skip = _header_lines(path)
    try:
        table = csv.read_csv(
            path,
            read_options=csv.ReadOptions(skip_rows=skip),
            parse_options=csv.ParseOptions(delimiter="\t"),
            convert_options=csv.ConvertOptions(
                column_types={
                    "#CHROM": pa.string(),
                    "ID": pa.string(),
                    "REF": pa.string(),
                    "ALT": pa.string(),
                }
            ),
        )
    except (pa.ArrowException, OSError) as err:
        raise MedweaveError(f"{path}: not a readable .pvar ({err})") from None
    missing = [k for k in ("#CHROM", "POS", "REF", "ALT") if k not in table.column_names]
    if missing:
        raise MedweaveError(
            f"{path}: header lacks {missing}; expected a .pvar header '#CHROM POS ID REF ALT' (tab-separated)"
        )
    ids = table.column("ID").to_numpy(zero_copy_only=False) if "ID" in table.column_names else None
    return VariantTable(
        chrom=normalise_chrom(table.column("#CHROM").to_numpy(zero_copy_only=False)),
        pos=table.column("POS").to_numpy().astype(np.int64),
        id=np.asarray(ids if ids is not None else np.full(table.num_rows, "."), str),
        ref=np.char.upper(table.column("REF").to_numpy(zero_copy_only=False).astype(str)),
        alt=np.char.upper(table.column("ALT").to_numpy(zero_copy_only=False).astype(str)),
    )


def read_psam(path: Path) -> list[str]:
    """Sample IDs (IID) in file order; a .psam without a header line is a .fam (FID IID ...)."""
    first = path.read_text().split("\n", 1)[0] if path.stat().st_size else ""
    if not first.startswith("#"):
        return [row[1] for row in _whitespace_table(path, 2, ".psam/.fam")]
    try:
        table = csv.read_csv(
            path,
            read_options=csv.ReadOptions(skip_rows=_header_lines(path)),
            parse_options=csv.ParseOptions(delimiter="\t"),
            convert_options=csv.ConvertOptions(
                strings_can_be_null=False, column_types={"#IID": pa.string(), "IID": pa.string()}
            ),
        )
    except (pa.ArrowException, OSError) as err:
        raise MedweaveError(f"{path}: not a readable .psam ({err})") from None
    names = [n.lstrip("#") for n in table.column_names]
    if "IID" not in names:
        raise MedweaveError(
            f"{path}: header has no IID column; expected '#IID' or '#FID IID' (PLINK 2 .psam)"
        )
    return [str(s) for s in table.column(names.index("IID")).cast(pa.string()).to_pylist()]


def _sidecars(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    base = path.with_suffix("")
    found = [base.with_suffix(s) for s in suffixes]
    absent = [p.name for p in found if not p.is_file()]
    if absent:
        raise MedweaveError(
            f"{path}: PLINK file set incomplete, {absent} missing; "
            f"expected {', '.join(base.name + s for s in suffixes)}"
        )
    return found


class PgenReader:
    """A PLINK 2 file set, named by its .pgen (the .pvar and .psam sit beside it)."""

    def __init__(self, path: Path):
        import pgenlib

        self.path = Path(path)
        pgen, pvar, psam = _sidecars(self.path, PLINK2)
        self.samples = read_psam(psam)
        self.variants = read_pvar(pvar)
        if np.char.find(self.variants.alt.astype(str), ",").max(initial=-1) >= 0:
            raise MedweaveError(
                f"{pvar}: multi-allelic variants; expected biallelic sites (split them with "
                "plink2 --make-pgen multiallelics=- )"
            )
        try:
            self._reader = pgenlib.PgenReader(str(pgen).encode(), raw_sample_ct=len(self.samples))
        except Exception as err:  # pgenlib raises RuntimeError with the C library's message
            raise MedweaveError(
                f"{pgen}: not a readable .pgen ({err}); expected {len(self.samples)} samples "
                f"as {psam.name} lists"
            ) from None
        if self._reader.get_variant_ct() != len(self.variants):
            raise MedweaveError(
                f"{pgen}: holds {self._reader.get_variant_ct()} variants but {pvar.name} lists "
                f"{len(self.variants)}; expected the same file set"
            )

    def blocks(self, size: int, select: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from self._blocks(size, select, reuse=False)

    def blocks_into(
        self, size: int, select: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """As ``blocks``, decoded into one buffer reused from block to block (a fresh 64 MiB array
        per block costs its page faults, a third of the decoding): the caller must not keep a block."""
        yield from self._blocks(size, select, reuse=True)

    def _blocks(self, size: int, select, reuse: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        buffer = None
        for index in selected_blocks(select, len(self.variants), size):
            if not reuse:
                out = np.empty((len(index), len(self.samples)), np.float32)
            else:
                if buffer is None:
                    buffer = np.empty((len(index), len(self.samples)), np.float32)
                out = buffer[: len(index)]
            contiguous = len(index) and index[-1] - index[0] == len(index) - 1
            try:
                if contiguous:
                    self._reader.read_dosages_range(int(index[0]), int(index[-1]) + 1, out)
                else:
                    self._reader.read_dosages_list(index.astype(np.uint32), out)
            except Exception as err:
                raise MedweaveError(
                    f"{self.path}: variants {index[0]}..{index[-1]} not readable ({err}); "
                    "expected a complete .pgen"
                ) from None
            if out.min(initial=0.0) < 0:  # pgenlib: -9 = missing (one cheap pass when none is)
                out[out < 0] = np.nan
            yield index, out

    def close(self) -> None:
        self._reader.close()


class BedReader:
    """A PLINK 1 file set, named by its .bed (the .bim and .fam sit beside it)."""

    def __init__(self, path: Path):
        from bed_reader import open_bed

        self.path = Path(path)
        bed, bim, fam = _sidecars(self.path, PLINK1)
        self.samples = [
            row[1] for row in _whitespace_table(fam, 6, ".fam (FID IID father mother sex phenotype)")
        ]
        rows = _whitespace_table(bim, 6, ".bim (chrom id cm pos A1 A2)")
        cols = list(zip(*rows, strict=True)) if rows else [()] * 6
        try:
            pos = np.asarray(cols[3], np.int64)
        except ValueError:
            raise MedweaveError(f"{bim}: column 4 (position) is not an integer on every line") from None
        self.variants = VariantTable(
            chrom=normalise_chrom(cols[0]),
            pos=pos,
            id=np.asarray(cols[1], str),
            ref=np.char.upper(np.asarray(cols[5], str)),
            alt=np.char.upper(np.asarray(cols[4], str)),
        )
        try:
            self._bed = open_bed(
                bed, iid_count=len(self.samples), sid_count=len(self.variants), num_threads=2
            )
            self._bed.read(index=np.s_[:1, :1])  # checks the magic bytes and the file size now
        except Exception as err:  # bed-reader raises ValueError/OSError with its own message
            raise MedweaveError(
                f"{bed}: not a readable .bed ({err}); expected {len(self.samples)} samples x "
                f"{len(self.variants)} variants as {fam.name} and {bim.name} list"
            ) from None

    def blocks(self, size: int, select: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for index in selected_blocks(select, len(self.variants), size):
            try:
                block = self._bed.read(index=np.s_[:, index], dtype="float32", order="F")
            except Exception as err:
                raise MedweaveError(
                    f"{self.path}: variants {index[0]}..{index[-1]} not readable ({err})"
                ) from None
            yield index, np.ascontiguousarray(block.T)

    def close(self) -> None:
        self._bed.__exit__(None, None, None)


def write_pgen(path: Path, samples: list[str], variants: VariantTable, blocks) -> None:
    """A PLINK 2 file set from hard-call blocks int8 [variants, samples] (0/1/2 ALT, -9 missing).

    ``blocks`` is an iterable, so a writer never holds more than one block (the sandbox's use).
    """
    import pgenlib

    path = Path(path)
    base = path.with_suffix("")
    base.with_suffix(".psam").write_text("#IID\n" + "".join(f"{s}\n" for s in samples))
    _write_pvar(base.with_suffix(".pvar"), variants)
    with pgenlib.PgenWriter(
        str(base.with_suffix(".pgen")).encode(), len(samples), variant_ct=len(variants), nonref_flags=False
    ) as writer:
        for block in blocks:
            writer.append_biallelic_batch(np.ascontiguousarray(block, np.int8))


def _write_pvar(path: Path, v: VariantTable) -> None:
    lines = ["#CHROM\tPOS\tID\tREF\tALT"]
    with open(path, "w") as f:
        f.write(lines[0] + "\n")
        for start in range(0, len(v), 100_000):
            s = slice(start, start + 100_000)
            f.write(
                "".join(
                    f"{c}\t{p}\t{i}\t{r}\t{a}\n"
                    for c, p, i, r, a in zip(v.chrom[s], v.pos[s], v.id[s], v.ref[s], v.alt[s], strict=True)
                )
            )


def write_bed(path: Path, samples: list[str], variants: VariantTable, blocks) -> None:
    """A PLINK 1 file set (A1 = ALT, A2 = REF) from hard-call blocks int8 [variants, samples]."""
    from bed_reader import create_bed

    path = Path(path)
    base = path.with_suffix("")
    properties = {
        "iid": samples,
        "chromosome": variants.chrom,
        "sid": variants.id,
        "bp_position": variants.pos,
        "allele_1": variants.alt,
        "allele_2": variants.ref,
    }
    with create_bed(
        base.with_suffix(".bed"), iid_count=len(samples), sid_count=len(variants), properties=properties
    ) as bed:
        for block in blocks:
            for row in np.asarray(block, np.int8):
                bed.write(np.where(row < 0, -127, row).astype(np.int8))
