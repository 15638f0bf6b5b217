"""Stage 2's training rows: with "balanced" sampling a question type few clips are asked is as
common among the rows as a type every clip is asked, each row reads ITS question's clip, and a
clip asked one type in several phrasings is one row whose phrasing is drawn when it is read."""

from __future__ import annotations

import collections

import numpy as np
import pyarrow as pa

from pipelines.train.data import (
    AttachQuestions,
    BalancedQuestionRows,
    Collate,
    balanced_repeats,
    caption_copies,
    captions_per_clip,
    type_counts,
)

N = 12  # clips; clip 0 alone is also asked the rare type


def _clips() -> pa.Table:
    return pa.table(
        {
            "clip_id": [f"c{c}" for c in range(N)],
            "x_tokens": pa.FixedShapeTensorArray.from_numpy_ndarray(
                np.stack([np.full((4, 3), c, np.float32) for c in range(N)])
            ),
            "caption_ids": [[100 + c] for c in range(N)],
            "paraphrase_ids": pa.array([[] for _ in range(N)], pa.list_(pa.list_(pa.int64()))),
        }
    )


def _questions(phrasings: int = 1) -> dict[str, tuple[list, list, list]]:
    """Every clip: one 'common' question (answer 5); clip 0 also a 'rare' one (answer 7), asked
    in `phrasings` phrasings (query ids [1000 + clip, 10 + phrasing])."""
    out = {}
    for c in range(N):
        asked = [("common", 0)] + ([("rare", p) for p in range(phrasings)] if c == 0 else [])
        out[f"c{c}"] = (
            [[1000 + c, 10 + p] for _, p in asked],
            [[7] if kind == "rare" else [5] for kind, _ in asked],
            [kind for kind, _ in asked],
        )
    return out


def _rows(fn, seed: int = 1) -> list[tuple[int, int, int, int]]:
    """(clip of the tokens, clip the query names, phrasing, answer) per row, via the collate;
    a caption row (no query) is (clip of the tokens, -1, -1, its caption id)."""
    table = fn(_clips())
    batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    batch["x_tokens"] = table.column("x_tokens").combine_chunks().to_numpy_ndarray()
    out = Collate(caption_mix=0.0, seed=seed)(batch)
    rows = []
    for i in range(table.num_rows):
        query = out["query_ids"][i][out["query_mask"][i].bool()].tolist()
        answer = out["input_ids"][i][out["attention_mask"][i].bool()].tolist()
        if not query:
            rows.append((int(out["x_tokens"][i, 0, 0]), -1, -1, answer[0]))
            continue
        rows.append((int(out["x_tokens"][i, 0, 0]), query[0] - 1000, query[1] - 10, answer[0]))
    return rows


def test_balanced_rows_make_a_rare_type_as_common_as_a_common_one() -> None:
    repeats = balanced_repeats(type_counts(_questions()))
    assert repeats == {"common": 1, "rare": N}
    rows = _rows(BalancedQuestionRows(_questions(), repeats))
    answers = collections.Counter(a for *_, a in rows)
    assert answers == {5: N, 7: N}, answers
    assert all(tokens == named for tokens, named, _, _ in rows), "a row reads its question's clip"


def test_phrasings_of_one_type_share_a_row_and_are_drawn_when_read() -> None:
    """Clip 0 asked the rare type in 4 phrasings: still one clip for the balance, N rows; the
    phrasing differs from read to read, and every one of them is read."""
    questions = _questions(phrasings=4)
    assert type_counts(questions) == {"common": N, "rare": 1}
    fn = BalancedQuestionRows(questions, balanced_repeats(type_counts(questions)))
    assert fn(_clips()).num_rows == 2 * N
    drawn = collections.Counter(
        phrasing for seed in range(4) for _, _, phrasing, a in _rows(fn, seed) if a == 7
    )
    assert sum(drawn.values()) == 4 * N and set(drawn) == {0, 1, 2, 3}, drawn


def test_uniform_rows_follow_the_corpus_mix() -> None:
    rows = _rows(AttachQuestions(_questions()))
    assert len(rows) == N and sorted(t for t, *_ in rows) == list(range(N))
    assert sum(a == 7 for *_, a in rows) <= 1  # only clip 0 can be asked the rare type
    assert all(tokens == named for tokens, named, _, _ in rows)


def test_caption_rows_follow_the_corpus_not_the_question_balance() -> None:
    """`--caption-mix 0.5` with balanced rows: half the stream is caption rows, each reading its
    own clip's caption, and every clip has as many as the others, although clip 0's questions
    fill N + 1 rows and the others' one each."""
    counts = type_counts(_questions())
    repeats = balanced_repeats(counts)
    rate = captions_per_clip(counts, repeats, N, 0.5)
    assert rate == 2.0  # 2N question rows; as many caption rows, over N clips
    rows = _rows(BalancedQuestionRows(_questions(), repeats, rate))
    captions = [(t, a) for t, named, _, a in rows if named == -1]
    assert all(a == 100 + t for t, a in captions), "a caption row reads its clip's caption"
    assert collections.Counter(t for t, _ in captions) == {c: 2 for c in range(N)}
    assert len(rows) - len(captions) == 2 * N, "question rows are the balanced ones"
    assert captions_per_clip(counts, repeats, N, 0.25) == 2 * N / 3 / N

    many = [caption_copies(f"clip-{k}", 2.3) for k in range(4000)]
    assert set(many) == {2, 3} and abs(np.mean(many) - 2.3) < 0.03
    assert many == [caption_copies(f"clip-{k}", 2.3) for k in range(4000)], "same stream again"
    assert captions_per_clip(counts, repeats, N, 1.0) == 1.0
    assert captions_per_clip(counts, repeats, N, 0.0) == 0.0


def test_repeats_round_to_the_commonest_count() -> None:
    assert balanced_repeats({"a": 640, "b": 64, "c": 32, "d": 384}) == {
        "a": 1,
        "b": 10,
        "c": 20,
        "d": 2,
    }


def test_question_weights_multiply_a_types_rows_from_the_command_line() -> None:
    """`--question-weights has_colour=2` is parsed by the config and doubles that type's rows on
    top of the balance; a type the features do not ask, a weight under 1, or weights on rows
    that are not balanced are refused naming the field."""
    import pydantic
    import pytest

    from pipelines.train import TrainConfig

    cfg = TrainConfig(data="f", stage="sft", question_weights="rare=3, common=1")
    assert cfg.question_weights == {"rare": 3, "common": 1}
    repeats = balanced_repeats(type_counts(_questions()), cfg.question_weights)
    assert repeats == {"common": 1, "rare": 3 * N}
    answers = collections.Counter(a for *_, a in _rows(BalancedQuestionRows(_questions(), repeats)))
    assert answers == {5: N, 7: 3 * N}, answers

    with pytest.raises(ValueError, match=r"\['colour'\].*common"):
        balanced_repeats(type_counts(_questions()), {"colour": 2})
    for bad in ("rare=0", "rare", "rare=two"):
        with pytest.raises(pydantic.ValidationError, match="question_weights"):
            TrainConfig(data="f", stage="sft", question_weights=bad)
    with pytest.raises(pydantic.ValidationError, match="question_weights"):
        TrainConfig(data="f", stage="sft", question_sampling="uniform", question_weights="rare=2")
