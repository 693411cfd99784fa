import pytest
import torch

from modality_translation.engines import ImagePool


def images(values, size=4):
    """A batch whose image i is filled with values[i] (so images are recognisable by value)."""
    return torch.stack([torch.full((1, size, size), float(v)) for v in values])


def ids(batch):
    return [int(image[0, 0, 0]) for image in batch]


def test_returns_current_images_until_full():
    pool = ImagePool(pool_size=5, seed=0)
    assert ids(pool.query(images([1, 2, 3]))) == [1, 2, 3]
    assert ids(pool.query(images([4, 5]))) == [4, 5]
    assert len(pool) == 5
    assert sorted(ids(pool.images)) == [1, 2, 3, 4, 5]


def test_fills_then_swaps_within_one_batch():
    pool = ImagePool(pool_size=2, seed=0)
    out = ids(pool.query(images([1, 2, 3, 4, 5, 6])))
    assert out[:2] == [1, 2]
    assert len(pool) == 2


def test_full_pool_swaps_about_half_with_history():
    pool = ImagePool(pool_size=50, seed=3)
    pool.query(images(range(50)))
    queried = list(range(1000, 3000))
    returned = ids(pool.query(images(queried)))
    swapped = [out for out, new in zip(returned, queried) if out != new]
    # Each image is swapped with probability 1/2: 2000 draws give 1000 +- 3 sigma (67).
    assert 930 < len(swapped) < 1070
    # Swaps return the first images and, later, images that earlier swaps stored.
    assert any(v < 50 for v in swapped) and any(v >= 1000 for v in swapped)
    assert len(pool) == 50


def test_swaps_return_stored_images_and_store_the_new_one():
    pool = ImagePool(pool_size=3, seed=1)
    pool.query(images([1, 2, 3]))
    for value in range(10, 40):
        before = sorted(ids(pool.images))
        out = ids(pool.query(images([value])))[0]
        after = sorted(ids(pool.images))
        if out == value:
            assert after == before
        else:
            assert out in before
            assert sorted(before[:before.index(out)] + before[before.index(out) + 1:] + [value]) == after


def test_seeded_draws_are_reproducible_and_seed_dependent():
    def run(seed):
        pool = ImagePool(pool_size=4, seed=seed)
        return [ids(pool.query(images([v, v + 100]))) for v in range(20)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_state_round_trip_continues_identically():
    pool = ImagePool(pool_size=4, seed=5)
    for v in range(6):
        pool.query(images([v]))
    state = pool.state_dict()
    expected = [ids(pool.query(images([v]))) for v in range(10, 30)]

    restored = ImagePool(pool_size=4, seed=99)
    restored.load_state_dict(state)
    assert [ids(restored.query(images([v]))) for v in range(10, 30)] == expected


def test_state_is_saved_with_torch_save_weights_only(tmp_path):
    pool = ImagePool(pool_size=2, seed=0)
    pool.query(images([1, 2, 3]))
    torch.save(pool.state_dict(), tmp_path / "pool.pt")
    state = torch.load(tmp_path / "pool.pt", weights_only=True)
    restored = ImagePool(pool_size=2)
    restored.load_state_dict(state)
    assert sorted(ids(restored.images)) == sorted(ids(pool.images))


def test_load_rejects_other_size():
    pool = ImagePool(pool_size=2)
    with pytest.raises(ValueError, match="pool_size"):
        ImagePool(pool_size=3).load_state_dict(pool.state_dict())


def test_zero_size_passes_through_and_detaches():
    fake = images([1, 2]).requires_grad_()
    out = ImagePool(pool_size=0).query(fake * 2)
    assert not out.requires_grad
    assert ids(out) == [2, 4]


def test_stored_images_are_detached_copies():
    pool = ImagePool(pool_size=2)
    batch = images([1, 2])
    pool.query(batch)
    batch.fill_(9)
    assert sorted(ids(pool.images)) == [1, 2]


def test_negative_size_rejected():
    with pytest.raises(ValueError, match="pool_size"):
        ImagePool(pool_size=-1)
