"""`PreparedTexts`: the compact token form every text path shares (padding, selection, keys)."""

from __future__ import annotations

import numpy as np

from jobbert_onnx.runtime.prepared import PreparedTexts, empty, from_rows


def sample() -> PreparedTexts:
    return from_rows([[0, 5, 6, 2], [0, 7, 2], [0, 8, 9, 10, 2]], [[0] * 4, [0] * 3, [0] * 5], skip=0)


def test_padded_rows_hold_each_texts_ids_then_padding():
    tokens = sample().padded(pad_token_id=1)
    np.testing.assert_array_equal(tokens["input_ids"], [[0, 5, 6, 2, 1], [0, 7, 2, 1, 1], [0, 8, 9, 10, 2]])
    np.testing.assert_array_equal(tokens["attention_mask"], [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(tokens["pooling_mask"], tokens["attention_mask"])
    assert tokens["input_ids"].dtype == np.int64


def test_skip_masks_leading_tokens_from_pooling_only():
    prepared = PreparedTexts.concat([sample().select([0]), from_rows([[0, 3, 4, 2]], [[0] * 4], skip=2)])
    tokens = prepared.padded(pad_token_id=1)
    np.testing.assert_array_equal(tokens["attention_mask"], [[1, 1, 1, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(tokens["pooling_mask"], [[1, 1, 1, 1], [0, 0, 1, 1]])


def test_select_and_concat_keep_rows_in_order():
    prepared = sample()
    picked = prepared.select([2, 0])
    assert [picked.row_ids(i).tolist() for i in range(2)] == [[0, 8, 9, 10, 2], [0, 5, 6, 2]]
    joined = PreparedTexts.concat([picked, empty(), prepared.select([1])])
    assert joined.counts.tolist() == [5, 4, 3]
    assert joined.row_ids(2).tolist() == [0, 7, 2]
    assert len(prepared.select([])) == 0


def test_keys_cover_context_ids_types_and_skip_with_a_fixed_size():
    prepared = sample()
    base = prepared.keys("a" * 64, "anchor")
    assert all(len(k) == 32 for k in base) and len(set(base)) == 3
    same_ids = from_rows([[0, 5, 6, 2]], [[0] * 4], skip=0)
    assert same_ids.keys("a" * 64, "anchor")[0] == base[0]  # equal tokens, equal key
    others = [
        prepared.keys("b" * 64, "anchor")[0],
        prepared.keys("a" * 64, "positive")[0],
        prepared.keys("a" * 64, "anchor\0")[0],
        prepared.keys("a" * 64)[0],
        from_rows([[0, 5, 6, 2]], [[0] * 4], skip=1).keys("a" * 64, "anchor")[0],
        from_rows([[0, 5, 6, 2]], [[0, 0, 1, 1]], skip=0).keys("a" * 64, "anchor")[0],
        from_rows([[0, 5, 6]], [[0] * 3], skip=0).keys("a" * 64, "anchor")[0],
    ]
    assert len({base[0], *others}) == len(others) + 1
