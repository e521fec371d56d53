"""EHR preparation, shard by shard: the events that may reach the model (events.py), one cache
shard per unit of MEDS shards (shards.py, the map), the vocabulary from their counts (vocab.py,
the reduce), and the lazy reader the DataModule serves batches from (cache.py)."""

from medweave.data.ehr.cache import PAD, UNK, EhrCache
from medweave.data.ehr.events import notes_per_subject
from medweave.data.ehr.prepare import STORE, prepare_codes
from medweave.data.ehr.shards import Labelled, plan_units, run_units

__all__ = [
    "PAD",
    "STORE",
    "UNK",
    "EhrCache",
    "Labelled",
    "notes_per_subject",
    "plan_units",
    "prepare_codes",
    "run_units",
]
