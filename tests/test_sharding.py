"""Splitting batches across processes (erase.core.sharding), checked in one process by computing one
share at a time: a share's rows, random draws and losses are those rows of the whole batch's."""

import pytest
import torch

from erase.core.sharding import draw_rows, my_rows, share_as
from erase.errors import UserError
from erase.families import ddpm
from erase.families.diffusion import noised
from erase.families.sd import epsilon_loss


def test_a_share_is_its_rows_of_the_batch():
    batch = (torch.arange(8).reshape(4, 2), torch.arange(4))
    with share_as(1, 2):
        images, labels = my_rows(batch)
    assert torch.equal(images, batch[0][2:]) and torch.equal(labels, batch[1][2:])
    with share_as(0, 1):
        assert my_rows(batch) is batch


def test_a_batch_that_does_not_split_evenly_is_a_user_error():
    with share_as(0, 2), pytest.raises(UserError, match="multiple of 2"):
        my_rows(torch.zeros(3, 1))


def test_noise_and_timesteps_of_a_share_are_those_of_the_whole_batch():
    scheduler = ddpm.build_scheduler()
    x = torch.randn(4, 4, 8, 8)
    torch.manual_seed(3)
    whole = noised(scheduler, x)
    for index in range(2):
        torch.manual_seed(3)  # every process starts from the same RNG state
        with share_as(index, 2):
            part = noised(scheduler, my_rows(x))
        rows = slice(2 * index, 2 * index + 2)
        for a, b in zip(part, whole):
            assert torch.equal(a, b[rows])


def test_draw_rows_keeps_the_rng_in_step_with_one_process():
    torch.manual_seed(0)
    expected = torch.rand(6), torch.rand(2)
    torch.manual_seed(0)
    with share_as(2, 3):
        part = draw_rows(torch.rand, 2)
    assert torch.equal(part, expected[0][4:])
    assert torch.equal(torch.rand(2), expected[1])  # the next draw is the same in every process


def test_mean_of_the_shares_losses_is_the_whole_batch_loss():
    """What DDP averages: the mean of two half-batch losses is the whole batch's mean loss."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4,
    )
    batch = (torch.randn(4, 4, 8, 8), torch.randn(4, 3, 8))
    loss_fn = epsilon_loss(ddpm.build_scheduler())
    torch.manual_seed(1)
    whole = loss_fn(unet, batch).mean()
    halves = []
    for index in range(2):
        torch.manual_seed(1)
        with share_as(index, 2):
            halves.append(loss_fn(unet, my_rows(batch)).mean())
    torch.testing.assert_close(sum(halves) / 2, whole, rtol=1e-6, atol=0)

