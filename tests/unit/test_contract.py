import pytest

from medweave.data import contract as c
from medweave.errors import MedweaveError


def test_modalities_accepts_any_subset():
    assert c.check_modalities(["image"]) == ["image"]
    assert c.check_modalities(["ehr_codes", "text"]) == ["ehr_codes", "text"]


@pytest.mark.parametrize("bad,hint", [(["imgae"], "image"), (["ehr"], "ehr_codes"), (["x"], None)])
def test_unknown_modality_names_valid_ones_and_near_miss(bad, hint):
    with pytest.raises(MedweaveError) as err:
        c.check_modalities(bad)
    assert f"unknown modality '{bad[0]}'" in str(err.value)
    assert "valid:" in str(err.value)
    assert (f"Did you mean '{hint}'" in str(err.value)) == (hint is not None)


def test_empty_and_duplicate_modalities_rejected():
    with pytest.raises(MedweaveError, match="empty"):
        c.check_modalities([])
    with pytest.raises(MedweaveError, match="twice"):
        c.check_modalities(["image", "image"])


def test_missing_root_says_what_was_expected(tmp_path):
    with pytest.raises(MedweaveError, match="does not exist.*medweave-sandbox"):
        c.require_root(tmp_path / "nope")


def test_a_launch_names_the_modalities_a_cohort_lacks(tmp_path):
    """An import has events but no images or genotypes: the error says which and what to pass."""
    from medweave.cli.train import check_config
    from medweave.errors import MedweaveError
    from tests.conftest import compose

    (tmp_path / "data").mkdir()
    cfg = compose("train", [f"data.root={tmp_path}"])
    with pytest.raises(MedweaveError) as err:
        check_config(cfg)
    message = str(err.value)
    assert "imaging/index.parquet (for image)" in message and "genomics/ (for genomics)" in message
    assert "data.modalities=[ehr_codes,text]" in message
    check_config(compose("train", [f"data.root={tmp_path}", "data.modalities=[ehr_codes,text]"]))
