"""`GLiClassDataModule`: the training mix (files, benchmarks, NLI, pattern stream), a seeded train/val split, and
one "all labels" evaluation loader per held-out benchmark.

Source specs are plain strings (or dicts) so Hydra can instantiate the module with `_target_`:
  train_files:   "path.jsonl" or {path, limit}
  benchmarks:    "name[:split[:limit]]" (split defaults to train) or {name, split, limit, source: local|hub}
  nli:           "split[:limit]" of snli, or {split, limit, source}
  eval_datasets: "name[:split[:limit]]" (split defaults to test) or a dict as for benchmarks
The processor is passed at runtime (`instantiate(cfg.data, processor=processor)`) or set as `dm.processor`.
The pattern stream is built from the train part only, so validation texts never leak into it, and needs the
processor (its examples are made to fit the length budget whole).
A `limit` is a seeded random sample of the file's rows, kept in file order (`sample_limits=True`, the default:
several files are sorted by label), or its first rows (`sample_limits=False`). NLI limits always take the first
pairs (premises are grouped, relations mixed).
Training batches are length-grouped (`length_window` batches at a time are sorted by token count before they are cut
into batches, within each dataset with `group_batches_by_dataset`; 0 turns it off), so dynamic padding pads little.
Under DDP each process trains whole batches of that order (gliclass/data/resumable.py), and resumes mid-epoch exactly.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from gliclass.data.benchmarks import PAPER_BENCHMARKS, BenchmarkSplit, data_root, read_benchmark, to_examples
from gliclass.data.dataset import GLiClassCollator, GLiClassDataset
from gliclass.data.families import FAMILY_OF, family_of, held_out_leaks
from gliclass.data.formats import Example, read_training_file
from gliclass.data.hub import load_hub_benchmark
from gliclass.data.nli import load_hub_nli, nli_examples, read_nli
from gliclass.data.overlap import NearDuplicateIndex
from gliclass.data.patterns import fits_whole, pattern_stream
from gliclass.data.resumable import EpochSampler, ResumableLoader
from gliclass.processing import GLiClassProcessor

log = logging.getLogger(__name__)

# what the training mix does with benchmark rows that have several true labels (go_emotions, sem_eval_2018_ec, atis)
MULTI_LABEL_ROWS = ("keep", "drop")


@dataclass
class BenchmarkSpec:
    name: str
    split: str
    limit: int | None = None
    source: str = "local"

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any], default_split: str) -> BenchmarkSpec:
        if isinstance(spec, str):
            parts = spec.split(":")
            if not 1 <= len(parts) <= 3 or not parts[0]:
                raise ValueError(f"benchmark spec {spec!r} must look like 'name[:split[:limit]]'")
            split = parts[1] if len(parts) > 1 and parts[1] else default_split
            limit = int(parts[2]) if len(parts) > 2 else None
            return cls(parts[0], split, limit)
        spec = dict(spec)
        unknown = set(spec) - {"name", "split", "limit", "source"}
        if "name" not in spec or unknown:
            raise ValueError(f"benchmark spec {spec} needs 'name' and only split/limit/source (got {sorted(unknown)})")
        if spec.get("source", "local") not in ("local", "hub"):
            raise ValueError(f"benchmark spec {spec}: source must be 'local' or 'hub'")
        return cls(spec["name"], spec.get("split") or default_split, spec.get("limit"), spec.get("source", "local"))

    def load(
        self, data_dir: str | None, sample_seed: int | None, exclude=None, drop_multi_label_rows: bool = False
    ) -> BenchmarkSplit:
        """The split, sampled; `exclude(text)` True drops a row, and so does having several true labels when
        `drop_multi_label_rows` (locally before the sample, from the hub after)."""
        if self.source == "hub":
            split = load_hub_benchmark(self.name, self.split, self.limit, sample_seed=sample_seed)
            if exclude is not None:
                kept = [row for row in split.rows if not exclude(row.text)]
                split.excluded, split.rows = len(split.rows) - len(kept), kept
            if drop_multi_label_rows:
                kept = [row for row in split.rows if len(row.labels) <= 1]
                split.multi_label_dropped, split.rows = len(split.rows) - len(kept), kept
            return split
        return read_benchmark(
            self.name,
            self.split,
            data_dir,
            self.limit,
            sample_seed,
            exclude=exclude,
            drop_multi_label_rows=drop_multi_label_rows,
        )


class GLiClassDataModule(LightningDataModule):
    def __init__(
        self,
        processor: GLiClassProcessor | None = None,
        train_files: Sequence[str | Mapping[str, Any]] = (),
        benchmarks: Sequence[str | Mapping[str, Any]] = (),
        nli: Sequence[str | Mapping[str, Any]] = (),
        nli_formulation: str = "hypothesis",
        nli_extra_negatives: int = 0,
        pattern_examples_per_bucket: int = 0,
        pattern_max_labels: int = 20,
        pattern_copies: int = 2,
        eval_datasets: Sequence[str | Mapping[str, Any]] = (),
        min_negatives: int = 1,
        max_negatives: int | None = None,
        max_candidates: int | None = None,
        max_foreign_negatives: int = 0,
        group_batches_by_dataset: bool = False,
        length_window: int = 8,
        val_fraction: float = 0.1,
        seed: int = 42,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_train_examples: int | None = None,
        shuffle_labels: bool = True,
        data_dir: str | None = None,
        sample_limits: bool = True,
        exclude_near_duplicates: bool = True,
        protected_test_sets: Sequence[str] = PAPER_BENCHMARKS,
        holdout_families: Sequence[str] = (),
        rows_per_family: int | None = None,
        multi_label_rows: str = "keep",
    ) -> None:
        super().__init__()
        if multi_label_rows not in MULTI_LABEL_ROWS:
            raise ValueError(
                f"multi_label_rows={multi_label_rows!r}: choose one of {list(MULTI_LABEL_ROWS)} (keep: train on rows "
                f"with several true labels as they are; drop: leave them out of the training mix)"
            )
        self.multi_label_rows = multi_label_rows
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.processor = processor
        self.train_files = list(train_files)
        self.benchmarks = [BenchmarkSpec.parse(s, "train") for s in benchmarks]
        self.holdout_families = list(holdout_families)
        if self.holdout_families:  # leave-family-out CV: no training set shares a family with a held-out one
            leaks = held_out_leaks([b.name for b in self.benchmarks], self.holdout_families)
            if leaks:
                log.info("held out of training (families %s): %s", self.holdout_families, leaks)
            self.benchmarks = [b for b in self.benchmarks if b.name not in leaks]
        if rows_per_family is not None:  # every family the same number of rows, split evenly over its sets
            if rows_per_family < 1:
                raise ValueError(f"rows_per_family must be >= 1 (or null), got {rows_per_family}")
            sizes = Counter(family_of(b.name) for b in self.benchmarks)
            for bench in self.benchmarks:
                bench.limit = math.ceil(rows_per_family / sizes[family_of(bench.name)])
        self.nli = list(nli)
        self.nli_formulation = nli_formulation
        self.nli_extra_negatives = nli_extra_negatives
        self.pattern_examples_per_bucket = pattern_examples_per_bucket
        self.pattern_max_labels = pattern_max_labels
        self.pattern_copies = pattern_copies
        self.eval_specs = [BenchmarkSpec.parse(s, "test") for s in eval_datasets]
        self.eval_names = [s.name for s in self.eval_specs]
        if self.holdout_families:
            outside = [n for n in self.eval_names if n not in FAMILY_OF or FAMILY_OF[n] not in self.holdout_families]
            if outside:
                raise ValueError(
                    f"holdout_families={self.holdout_families}: eval_datasets {outside} are not in a held-out family, "
                    f"so a cross-validation fold would score sets outside the fold"
                )
        if len(set(self.eval_names)) != len(self.eval_names):
            raise ValueError(f"eval_datasets name a dataset twice: {self.eval_names}")
        self.min_negatives = min_negatives
        self.max_negatives = max_negatives
        self.max_candidates = max_candidates
        self.max_foreign_negatives = max_foreign_negatives
        self.group_batches_by_dataset = group_batches_by_dataset
        if length_window < 0:
            raise ValueError(f"length_window must be >= 0 (0: no length grouping), got {length_window}")
        self.length_window = length_window
        # (examples, their sequence lengths) of the last training loader, for length-grouped batches
        self._train_lengths: tuple[Sequence[Example], list[int]] | None = None
        self.val_fraction = val_fraction
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.max_train_examples = max_train_examples
        self.shuffle_labels = shuffle_labels
        self.data_dir = data_dir
        self.sample_seed = seed if sample_limits else None  # limits: a seeded sample (True) or the first rows
        # training rows equal to, or overlapping by containment (>= 40 normalised characters), a row of an eval
        # dataset's split (all of its rows, not only the sample) or of a protected set's test split are dropped
        self.exclude_near_duplicates = exclude_near_duplicates
        self.protected_test_sets = list(protected_test_sets)
        self.near_duplicates_dropped: dict[str, int] = {}
        # per training set, its rows with several true labels left out by multi_label_rows=drop (before the sample)
        self.multi_label_rows_dropped: dict[str, int] = {}
        self.train_examples: list[Example] | None = None
        self.val_examples: list[Example] | None = None
        self._eval: dict[str, BenchmarkSplit] | None = None

    # ------------------------------------------------------------------------------------------ data
    def _nli_examples(self) -> list[Example]:
        out = []
        for spec in self.nli:
            spec = {"split": spec.split(":")[0], "limit": _limit(spec)} if isinstance(spec, str) else dict(spec)
            limit = spec.get("limit")
            if spec.get("source", "local") == "hub":
                pairs = load_hub_nli(spec.get("split", "validation"), limit)
            else:
                pairs = read_nli(spec.get("split", "validation"), self.data_dir, limit=limit)
            out += nli_examples(pairs, self.nli_formulation, self.nli_extra_negatives, self.seed)
        return out

    def near_duplicate_index(self) -> NearDuplicateIndex | None:
        """Every row the training mix must not hold (see `__init__`), or None when the check is off."""
        if not self.exclude_near_duplicates:
            return None
        sources = [(s.name, s.split, s.source) for s in self.eval_specs]
        root = None
        with contextlib.suppress(FileNotFoundError):  # no data directory: only the hub eval sets are checked
            root = data_root(self.data_dir)
        missing = []
        for name in self.protected_test_sets:
            if root is not None and (root / name / "test.jsonl").is_file():
                sources.append((name, "test", "local"))
            elif name not in {s.name for s in self.eval_specs}:
                missing.append(name)
        if missing:
            log.warning(
                "near-duplicate filter: the test splits of %s are not in the data directory, so training rows are "
                "not checked against them (data.protected_test_sets lists the sets to protect)",
                missing,
            )
        return _reference_index(tuple(sorted(set(sources))), None if root is None else str(root))

    def _dropped(self, source: str, count: int) -> None:
        if count:
            self.near_duplicates_dropped[source] = self.near_duplicates_dropped.get(source, 0) + count
            log.info("%s: %d training rows dropped as near-duplicates of evaluation rows", source, count)

    def build_mix(self) -> list[Example]:
        """Every training source, in spec order (before the train/val split), without near-duplicates of any
        evaluation row (`exclude_near_duplicates`)."""
        index = self.near_duplicate_index()
        exclude = None if index is None else index.matches
        self.near_duplicates_dropped = {}
        mix: list[Example] = []
        for spec in self.train_files:
            spec = {"path": spec} if isinstance(spec, str) else dict(spec)
            rows = read_training_file(spec["path"], spec.get("limit"), self.sample_seed)
            if exclude is not None:
                kept = [ex for ex in rows if not exclude(ex.text)]
                self._dropped(str(spec["path"]), len(rows) - len(kept))
                rows = kept
            mix += rows
        drop_multi = self.multi_label_rows == "drop"
        splits = [
            bench.load(self.data_dir, self.sample_seed, exclude=exclude, drop_multi_label_rows=drop_multi)
            for bench in self.benchmarks
        ]
        self.multi_label_rows_dropped = {}
        for split in splits:
            self._dropped(f"{split.name}/{split.split}", split.excluded)
            if split.multi_label_dropped:
                self.multi_label_rows_dropped[split.name] = split.multi_label_dropped
                log.info(
                    "%s/%s: %d rows with several labels left out (multi_label_rows=drop)",
                    split.name,
                    split.split,
                    split.multi_label_dropped,
                )
        for split in splits:
            # random negatives from the other training datasets' label sets
            foreign = [label for other in splits if other.name != split.name for label in other.labels]
            mix += to_examples(
                split,
                min_negatives=self.min_negatives,
                max_negatives=self.max_negatives,
                seed=self.seed,
                max_candidates=self.max_candidates,
                foreign_labels=foreign,
                max_foreign_negatives=self.max_foreign_negatives,
            )
        nli = self._nli_examples()
        if exclude is not None:
            kept = [ex for ex in nli if not exclude(ex.text)]
            self._dropped("snli", len(nli) - len(kept))
            nli = kept
        mix += nli
        if not mix:
            raise ValueError("GLiClassDataModule has no training data: give train_files, benchmarks or nli")
        return mix

    def train_val_split(self, mix: Sequence[Example]) -> tuple[list[Example], list[Example]]:
        """Seeded shuffle, then the first `val_fraction` of it is validation."""
        order = list(range(len(mix)))
        random.Random(f"split:{self.seed}").shuffle(order)
        num_val = round(len(mix) * self.val_fraction)
        return [mix[i] for i in order[num_val:]], [mix[i] for i in order[:num_val]]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_examples is None:
            train, val = self.train_val_split(self.build_mix())
            if self.pattern_examples_per_bucket:
                train += pattern_stream(
                    train,
                    self.pattern_examples_per_bucket,
                    seed=self.seed,
                    max_labels=self.pattern_max_labels,
                    copies=self.pattern_copies,
                    fits=fits_whole(self._processor()),  # no example loses a positive's evidence to the cut
                )
                random.Random(f"mix:{self.seed}").shuffle(train)  # so a cap keeps a sample of every source
            if self.max_train_examples is not None:
                train = train[: self.max_train_examples]
            self.train_examples, self.val_examples = train, val
        if stage != "predict":
            self._load_eval()

    def _load_eval(self) -> dict[str, BenchmarkSplit]:
        if self._eval is None:
            self._eval = {spec.name: spec.load(self.data_dir, self.sample_seed) for spec in self.eval_specs}
        return self._eval

    @property
    def eval_labels(self) -> dict[str, list[str]]:
        """Full label list of each eval dataset, in canonical order (= the logits' order in its batches)."""
        return {name: list(b.labels) for name, b in self._load_eval().items()}

    @property
    def eval_multi_label(self) -> dict[str, bool]:
        """Per eval dataset: True -> sigmoid/threshold decisions, False -> argmax over its labels."""
        return {name: b.multi_label for name, b in self._load_eval().items()}

    def eval_examples(self, name: str) -> list[Example]:
        return to_examples(self._load_eval()[name], all_labels=True)

    # ------------------------------------------------------------------------------------------ loaders
    def _processor(self) -> GLiClassProcessor:
        if self.processor is None:
            raise RuntimeError("GLiClassDataModule needs a processor: pass processor= or set dm.processor first")
        return self.processor

    def _loader(self, examples: Sequence[Example], train: bool) -> DataLoader:
        processor = self._processor()
        dataset = GLiClassDataset(
            examples,
            processor,
            shuffle_labels=train and self.shuffle_labels,
            seed=self.seed,
            trim_labels_to_fit=train,  # drop negatives (counted, logged) rather than the text or the row
            group_labels_to_fit=not train,  # evaluation scores every label: groups that fit, as the pipeline does
        )
        if not train:
            return DataLoader(
                dataset,
                batch_size=self.eval_batch_size,
                collate_fn=GLiClassCollator(processor),
                num_workers=self.num_workers,
            )
        lengths = None
        if self.length_window:
            if self._train_lengths is None or self._train_lengths[0] is not examples:
                self._train_lengths = (examples, dataset.sequence_lengths())
            lengths = self._train_lengths[1]
        return ResumableLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochSampler(
                len(dataset),
                self.seed,
                groups=[ex.meta.get("dataset", "other") for ex in examples] if self.group_batches_by_dataset else None,
                batch_size=self.batch_size,
                tag_draws=True,  # label shuffles seeded by the sample's place in the run, in whichever worker
                lengths=lengths,
                length_window=self.length_window,
                # under DDP each process gets whole batches (one dataset each); Lightning keeps this sampler
                **self._replica(),
            ),
            collate_fn=GLiClassCollator(processor),
            num_workers=self.num_workers,
        )

    def _replica(self) -> dict[str, int]:
        """This process's place among the training processes: from the trainer fitting this module, if any."""
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return {}
        return {"num_replicas": trainer.world_size, "rank": trainer.global_rank}

    def train_dataloader(self) -> DataLoader:
        if self.train_examples is None:
            self.setup("fit")
        return self._loader(self.train_examples, train=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if self.val_examples is None:
            self.setup("fit")
        return self._loader(self.val_examples, train=False) if self.val_examples else []

    def eval_dataloaders(self) -> list[DataLoader]:
        """One loader per eval dataset, in `eval_names` order; every label of the dataset is a candidate."""
        return [self._loader(self.eval_examples(name), train=False) for name in self.eval_names]

    def test_dataloader(self) -> list[DataLoader]:
        return self.eval_dataloaders()


@functools.lru_cache(maxsize=8)
def _reference_index(sources: tuple[tuple[str, str, str], ...], root: str | None) -> NearDuplicateIndex:
    """The rows of every (name, split, source) split, whole, indexed (cached: tests and sweeps rebuild it often)."""
    index = NearDuplicateIndex(())
    for name, split, source in sources:
        for row in BenchmarkSpec(name, split, None, source).load(root, None).rows:
            index.add(row.text)
    return index


def _limit(spec: str) -> int | None:
    parts = spec.split(":")
    return int(parts[1]) if len(parts) > 1 and parts[1] else None
