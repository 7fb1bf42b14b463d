"""Near-duplicate detection (gliclass/data/overlap.py): against a brute-force definition, on the spellings that
separate copies of one sentence in the public datasets, and on the real overlaps of ../shared/data."""

from __future__ import annotations

import json
import random

import pytest
from conftest import SHARED_DATA

from gliclass.data.benchmarks import read_benchmark
from gliclass.data.overlap import NearDuplicateIndex, normalize

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"benchmark data not found at {SHARED_DATA}")


def brute_force(reference: list[str], text: str, min_chars: int = 40) -> bool:
    norm = normalize(text)
    for ref in map(normalize, reference):
        if not ref or not norm:
            continue
        if ref == norm:
            return True
        short, long = sorted((ref, norm), key=len)
        if len(short) >= min_chars and short in long:
            return True
    return False


def test_normalize_undoes_tokenisation_case_and_escapes():
    sst = "Moore's film (a remake) isn't \"great\" -- but fine."
    subj = "moore 's film -lrb- a remake -rrb- is n't `` great '' -- but fine ."
    assert normalize(sst) == normalize(subj) == "mooresfilmaremakeisntgreatbutfine"
    assert normalize("one<br /><br />two") == normalize("One two")


def test_containment_both_ways_from_40_characters():
    sentence = "a very very slow moving aimless movie about a distressed drifting young man"
    index = NearDuplicateIndex([f"I rented it. {sentence.upper()}! Not recommended at all, sadly."])
    assert index.matches(sentence)  # a training sentence inside a test review
    index = NearDuplicateIndex([sentence])
    assert index.matches(f"Review: {sentence}. Ten words more to make it a longer text.")  # a test row inside
    short = "slow moving aimless movie"  # 22 normalised characters: contained, but too short to count
    assert not NearDuplicateIndex([sentence]).matches(short)
    assert NearDuplicateIndex([short]).matches(short.upper() + " .")  # equal after normalisation: always


def test_agrees_with_brute_force_on_random_texts():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(30)]

    def sentence(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    reference = [sentence(rng.randint(2, 30)) for _ in range(120)]
    queries = [sentence(rng.randint(2, 40)) for _ in range(200)]
    for ref in rng.sample(reference, 40):  # planted overlaps at every offset, both ways
        queries.append(f"{sentence(rng.randint(0, 6))} {ref} {sentence(rng.randint(0, 6))}")
        cut = ref.split()
        queries.append(" ".join(cut[rng.randint(0, len(cut) // 3) : len(cut) - rng.randint(0, len(cut) // 3)]))
    index = NearDuplicateIndex(reference)
    got = [index.matches(q) for q in queries]
    want = [brute_force(reference, q) for q in queries]
    assert got == want
    assert 20 < sum(want) < len(queries)  # the comparison exercises both answers


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="min_chars > key"):
        NearDuplicateIndex([], min_chars=20, key=24)


def test_read_benchmark_excludes_before_the_sample(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "labels.json").write_text(json.dumps(["a", "b"]))
    rows = [{"text": f"row number {i}", "labels": ["a" if i % 2 else "b"]} for i in range(50)]
    (tmp_path / "toy" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    banned = {f"row number {i}" for i in range(0, 50, 5)}
    split = read_benchmark("toy", "train", tmp_path, limit=30, sample_seed=1, exclude=banned.__contains__)
    assert len(split.rows) == 30 and split.excluded == 10
    assert not banned & {row.text for row in split.rows}
    head = read_benchmark("toy", "train", tmp_path, limit=5, exclude=banned.__contains__)
    assert [row.text for row in head.rows] == [f"row number {i}" for i in (1, 2, 3, 4, 6)]


@needs_data
def test_the_known_overlaps_of_the_shared_data_are_found():
    """Issue 22's counts (subj: 283 sst2 and 346 sst5 test sentences; uci_imdb_sentences inside 23 imdb reviews) are
    lower bounds: they were found with a coarser normalisation."""
    found = {}
    for test_set, train_set in [("sst2", "subj"), ("sst5", "subj"), ("imdb", "uci_imdb_sentences")]:
        index = NearDuplicateIndex(row.text for row in read_benchmark(test_set, "test", SHARED_DATA).rows)
        found[test_set] = sum(index.matches(r.text) for r in read_benchmark(train_set, "train", SHARED_DATA).rows)
    assert found["sst2"] >= 283 and found["sst5"] >= 346 and found["imdb"] >= 23, found
