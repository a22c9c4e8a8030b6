"""handlers/tokens.py: padding to the batch's longest text and the split into length groups."""
import pytest

from handlers.tokens import TokenItem, pad, plan_groups


def item(n: int) -> TokenItem:
    return TokenItem(list(range(1, n + 1)), [0] * n, False, 0)


def test_a_batch_is_padded_to_its_longest_text_with_a_mask():
    batch = pad([item(3), item(5), item(1)], pad_id=0)
    assert batch.input_ids.shape == (3, 5)
    assert batch.attention_mask.sum(dim=1).tolist() == [3, 5, 1]
    assert batch.input_ids[0].tolist() == [1, 2, 3, 0, 0] and batch.inputs(["attention_mask"])[0] is batch.attention_mask


@pytest.mark.parametrize("lengths", [[7], [5, 5, 5], [10, 11, 12, 9], [64, 3, 4, 5, 3, 60], list(range(1, 40))])
def test_groups_take_every_text_once(lengths):
    groups = plan_groups(lengths, call_tokens=16)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))


def test_similar_lengths_stay_one_batch_in_order_and_outliers_get_their_own_call():
    assert plan_groups([10, 11, 12, 9], call_tokens=16) == [[0, 1, 2, 3]]
    groups = plan_groups([64, 3, 4, 5, 3, 60], call_tokens=16)
    assert sorted(map(sorted, groups)) == [[0, 5], [1, 2, 3, 4]]


def test_the_split_never_costs_more_than_one_padded_batch():
    lengths = [3, 50, 7, 7, 30, 31, 2, 64]
    groups = plan_groups(lengths, call_tokens=64)
    cost = sum(len(g) * max(lengths[i] for i in g) + 64 for g in groups)
    assert cost <= len(lengths) * max(lengths) + 64


def test_a_batch_can_be_padded_to_a_multiple_of_tokens():
    batch = pad([item(3), item(17)], pad_id=0, multiple=16)
    assert batch.input_ids.shape == (2, 32) and batch.attention_mask.sum(dim=1).tolist() == [3, 17]
