"""to-LoRA, resize, merge, extract and bake: exact where the rank allows (error ~0), the SVD tail otherwise (checked
against torch.linalg.svd), the energy policy, W-dependent methods only with base weights, nearest-Kronecker
extraction, and results that load in the real LyCORIS library."""

from __future__ import annotations

import math

import pytest
import torch

import lyco_core
from lyco_core import AdapterError
from lyco_core.convert import RankPolicy, bake, extract, merge, resize, to_lora
from lyco_core.convert.deltas import module_delta, needs_weight

from tests.host.tolerances import agreement, delta_agreement

from .convert_fixtures import low_rank, relative
from .oracles import lycoris_oracle

FULL_RANK = RankPolicy(rank=96, exact=True)
# A full-rank SVD of a tiny model's ΔW (≤ 96×64, conv3 48×288) rebuilds it up to rounding: its reductions are ≤ 64
# long (the smaller side of fc1/fc2, 48 for conv3) and U·diag(S)·Vᵀ chains 2 products.
SVD_DEPTH, SVD_STEPS = 64, 2


def weights_only(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors.items() if k.endswith("weight")}


def tail(delta: torch.Tensor, rank: int) -> float:
    s = torch.linalg.svdvals(delta.reshape(delta.shape[0], -1).double())
    return math.sqrt(float(s[rank:].square().sum() / s.square().sum()))


@pytest.mark.parametrize(
    "name,needs_base",
    [
        ("lycoris-locon", False),
        ("lycoris-locon-tucker", False),
        ("lycoris-loha", False),
        ("lycoris-loha-tucker", False),
        ("lycoris-lokr", False),
        ("lycoris-lokr-tucker", False),
        ("lycoris-full", False),
        ("lycoris-norm", False),
        ("lycoris-oft", True),
        ("lycoris-boft", True),
        ("lycoris-glora", True),
        ("lycoris-ia3", True),
        ("lycoris-locon-dora-out", True),
        ("lycoris-mixed", True),
    ],
)
def test_to_lora_at_full_rank_is_exact(name, needs_base, lyco_cases):
    case = lyco_cases[name]
    adapter = lyco_core.load_adapter(case.path)
    reference = weights_only(adapter.patch(case.base))
    if needs_base:
        with pytest.raises(AdapterError, match="needs the base weights") as info:
            to_lora(adapter, FULL_RANK)
        assert next(n for n, m in adapter.modules.items() if needs_weight(m)) in str(info.value)
    lora, report = to_lora(adapter, FULL_RANK, base=case.base)
    assert {m.algo for m in lora.modules.values()} <= {"lora", "norm"}
    assert report.total_error() is None or report.total_error() <= agreement(SVD_DEPTH, steps=SVD_STEPS)  # 1.5e-5
    bound = delta_agreement(reference, case.base, SVD_DEPTH, steps=SVD_STEPS)
    assert relative(lora.patch(case.base), reference, case.base) <= bound
    if name == "lycoris-full":
        assert any("bias delta dropped" in n for n in report.notes)


def test_to_lora_error_is_each_modules_svd_tail(lyco_cases):
    case = lyco_cases["lycoris-loha"]
    adapter = lyco_core.load_adapter(case.path)
    lora, report = to_lora(adapter, RankPolicy(rank=3, exact=True))
    for entry in report.modules:
        delta, _ = module_delta(
            adapter.modules[entry.name], shape=case.base[entry.name[len("lycoris_") :] + ".weight"].shape
        )
        assert entry.error == pytest.approx(tail(delta, 3), rel=1e-4)
        assert lora.modules[entry.name].rank() == 3
    squares = [m.err_sq for m in report.modules]
    assert report.total_error() == pytest.approx(math.sqrt(sum(squares) / sum(m.ref_sq for m in report.modules)))


def test_to_lora_energy_policy_and_conv_rank(lyco_cases):
    case = lyco_cases["lycoris-loha"]
    adapter = lyco_core.load_adapter(case.path)
    _, report = to_lora(adapter, RankPolicy(energy=0.9, conv_rank=5), base=case.base)
    for entry in report.modules:
        if entry.name.endswith("conv3") or entry.name.endswith("conv1"):
            assert entry.result == "lora r5"
        else:
            assert 1 - entry.error**2 >= 0.9 - 1e-6  # error of the method (the energy policy's rank), not rounding
    lora, _ = to_lora(adapter, RankPolicy(rank=4), base=case.base)
    assert lora.modules["lycoris_conv3"].params["lora_down.weight"].shape == (4, 32, 3, 3)  # kernel from the base


def test_resize_lora_on_factors_and_dora_kept(lyco_cases):
    case = lyco_cases["lycoris-locon"]
    adapter = lyco_core.load_adapter(case.path)
    small, report = resize(adapter, RankPolicy(rank=2))
    for entry in report.modules:
        module = adapter.modules[entry.name]
        delta = module.delta(
            torch.Size(case.base[entry.name[len("lycoris_") :] + ".weight"].shape), "cpu", torch.float32
        )
        assert entry.error == pytest.approx(tail(delta, 2), rel=1e-4)
    assert {m.rank() for m in small.modules.values()} == {2}
    dora = lyco_core.load_adapter(lyco_cases["lycoris-locon-dora-out"].path)
    kept, _ = resize(dora, RankPolicy(rank=4))
    for name, module in kept.modules.items():
        assert module.dora and torch.equal(module.params["dora_scale"], dora.modules[name].params["dora_scale"])
    # rank 4 of rank 4: exact up to rounding (re-factored through an SVD, then the DoRA rescale: 3 steps)
    reference = dora.patch(case.base)
    bound = delta_agreement(weights_only(reference), case.base, SVD_DEPTH, steps=SVD_STEPS + 1)
    assert relative(kept.patch(case.base), reference, case.base) <= bound


def test_merge_full_is_the_exact_sum_of_mixed_methods_and_layouts(lyco_cases, peft_cases):
    base = lyco_cases["lycoris-loha"].base
    loha = lyco_core.load_adapter(lyco_cases["lycoris-loha"].path)
    lokr = lyco_core.load_adapter(lyco_cases["lycoris-lokr"].path)
    with pytest.raises(AdapterError, match="flattened"):
        merge([loha, lokr], [0.5, -0.7])  # plain LoHa/LoKr convs: the kernel shape needs the model
    merged, report = merge([loha, lokr], [0.5, -0.7], base={k: v for k, v in base.items()})
    assert report.total_error() is None and {m.algo for m in merged.modules.values()} == {"full"}
    expected = lokr.patch({**base, **loha.patch(base, 0.5)}, -0.7)
    # rank-4 deltas: LoHa's two products, LoKr's w2 = a·b and its Kronecker product, two additions: 4 steps
    bound = delta_agreement(weights_only(expected), base, 4, steps=4)
    assert relative(merged.patch(base), expected, base) <= bound
    peft_lora = lyco_core.load_adapter(peft_cases["peft-loha"].path)  # same layer paths, PEFT names
    mixed, _ = merge([loha, peft_lora], [1.0, 1.0], RankPolicy(rank=4))
    assert set(mixed.modules) == set(loha.modules)  # layouts differ: LyCORIS names for every layer
    assert mixed.metadata["modelspec.merged_from"].startswith("lycoris-loha.safetensors:1")


def test_merge_to_lora_error_is_the_tail_of_the_summed_delta(lyco_cases):
    adapters = [lyco_core.load_adapter(lyco_cases[n].path) for n in ("lycoris-loha", "lycoris-locon")]
    merged, report = merge(adapters, [1.0, 0.5], RankPolicy(rank=6, exact=True))
    full, _ = merge(adapters, [1.0, 0.5])
    for entry in report.modules:
        assert entry.error == pytest.approx(tail(full.modules[entry.name].params["diff"], 6), rel=1e-4)
    assert {m.rank() for m in merged.modules.values()} == {6}
    locon = adapters[1]  # plain LoRAs only: merged in factor space, never forming ΔW
    twice, report = merge([locon, locon], [1.0, -0.3], RankPolicy(rank=2))
    for entry in report.modules:
        module = locon.modules[entry.name]
        shape = torch.Size((module.params["lora_up.weight"].shape[0], *module.params["lora_down.weight"].shape[1:]))
        assert entry.error == pytest.approx(tail(0.7 * module.delta(shape, "cpu", torch.float32), 2), rel=1e-4)


def test_merge_with_weight_dependent_methods_follows_the_chain(lyco_cases):
    base = lyco_cases["lycoris-oft"].base
    oft = lyco_core.load_adapter(lyco_cases["lycoris-oft"].path)
    locon = lyco_core.load_adapter(lyco_cases["lycoris-locon"].path)
    with pytest.raises(AdapterError, match="lycoris_fc1"):
        merge([locon, oft], [1.0, 0.8])
    merged, _ = merge([locon, oft], [1.0, 0.8], base=base)
    chained = oft.patch({**base, **locon.patch(base)}, 0.8)
    # rank-4 up·down (1 step), OFT blocks ≤ 16: Cayley solve and R·W (2 steps), the addition (1)
    bound = delta_agreement(weights_only(chained), base, 16, steps=4)
    assert relative(merged.patch(base), weights_only(chained), base) <= bound


def test_extract_lora_recovers_known_rank_and_reports_the_tail():
    gen = torch.Generator().manual_seed(11)
    base = {
        "fc.weight": torch.randn(48, 32, generator=gen),
        "conv.weight": torch.randn(24, 16, 3, 3, generator=gen),
        "fc.bias": torch.randn(48, generator=gen),
    }
    tuned = dict(base)
    tuned["fc.weight"] = base["fc.weight"] + low_rank(48, 32, 4, seed=12, decay=0.7)
    tuned["conv.weight"] = base["conv.weight"] + low_rank(24, 16, 6, seed=13, decay=0.7, kernel=(3, 3))
    exact, report = extract(base, tuned, RankPolicy(rank=4, conv_rank=6))
    # tuned − base is rank 4 / 6 only up to the rounding of tuned (ε·max|tuned|, large against the change), then
    # an SVD over ≤ 32 (fc's smaller side; conv 24) and U·S·Vᵀ: delta_agreement's 2ε·(max|W'|/max|ΔW| + 2·32)
    changed = {k: tuned[k] for k in ("fc.weight", "conv.weight")}
    bound = delta_agreement(changed, base, 32, steps=2)
    assert report.total_error() <= bound and set(exact.modules) == {"lycoris_fc", "lycoris_conv"}
    assert relative(exact.patch(base), changed, base) <= bound
    lossy, report = extract(base, tuned, RankPolicy(rank=2, exact=True))
    for entry in report.modules:
        key = entry.name[len("lycoris_") :] + ".weight"
        assert entry.error == pytest.approx(tail(tuned[key] - base[key], 2), rel=1e-4)
    assert lossy.metadata["ss_training_comment"].startswith("lyco_core extract")


def test_extract_lokr_recovers_an_exact_kronecker_delta_and_loads_in_lycoris(tmp_path):
    pytest.importorskip("lycoris")
    model = lycoris_oracle.tiny_model()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(14)
    tuned = dict(base)
    # fc1 96×64 → factors (8,12)x(8,8); conv3 48×32×3×3 → (6,8)x(4,8), W2 full with its kernel
    tuned["fc1.weight"] = (
        base["fc1.weight"] + torch.kron(torch.randn(8, 8, generator=gen), torch.randn(12, 8, generator=gen)) * 0.1
    )
    w2 = torch.randn(8, 8, 3, 3, generator=gen)
    tuned["conv3.weight"] = base["conv3.weight"] + 0.1 * torch.kron(
        torch.randn(6, 4, generator=gen), w2.reshape(8, -1)
    ).reshape(48, 32, 3, 3)
    adapter, report = extract(base, tuned, RankPolicy(rank=64), method="lokr")
    # the Kronecker factors come from a rank-1 SVD of the rearranged ΔW, whose reductions run over a factor's
    # entries (≤ 8·8 = 64) and the other's (≤ 12·8 = 96); tuned's own rounding counts through the ratio
    changed = {k: tuned[k] for k in ("fc1.weight", "conv3.weight")}
    bound = delta_agreement(changed, base, 96, steps=2)
    assert report.total_error() <= bound, report.text()
    assert adapter.modules["lycoris_fc1"].full_matrix and adapter.modules["lycoris_conv3"].full_matrix
    path = lyco_core.save_adapter(adapter, tmp_path / "kron.safetensors")
    from lycoris import create_lycoris_from_weights

    with lycoris_oracle._quiet_lycoris(), torch.no_grad():
        network, _ = create_lycoris_from_weights(1.0, str(path), model)
        network.apply_to()
        for key in ("fc1", "conv3"):
            effective = lycoris_oracle.probe_layer(getattr(model, key))[0]
            change = float((tuned[f"{key}.weight"] - base[f"{key}.weight"]).abs().max())
            # the extraction's bound, plus LyCORIS' own Kronecker product and the probe's forward (2 steps more)
            loaded_bound = delta_agreement(tuned[f"{key}.weight"], base[f"{key}.weight"], 96, steps=4)
            assert float((effective - tuned[f"{key}.weight"]).abs().max()) <= loaded_bound * change
    low, report = extract(base, tuned, RankPolicy(rank=2), method="lokr")
    assert "lokr r2" in report.modules[0].result and low.modules["lycoris_fc1"].rank() == 2


def test_to_lora_output_loads_in_lycoris_with_conv_kernels(lyco_cases, tmp_path):
    pytest.importorskip("lycoris")
    case = lyco_cases["lycoris-loha"]
    lora, _ = to_lora(lyco_core.load_adapter(case.path), FULL_RANK, base=case.base)
    path = lyco_core.save_adapter(lora, tmp_path / "as_lora.safetensors")
    model = lycoris_oracle.tiny_model()
    from lycoris import create_lycoris_from_weights

    with lycoris_oracle._quiet_lycoris(), torch.no_grad():
        network, _ = create_lycoris_from_weights(1.0, str(path), model)
        network.apply_to()
        effective = {
            f"{n}.weight": lycoris_oracle.probe_layer(getattr(model, n))[0] for n in ("fc1", "fc2", "conv3", "conv1")
        }
    reference = weights_only(case.reference[1.0])  # full-rank SVD, then LyCORIS' up·down and the probe: 2 steps more
    assert relative(effective, reference, case.base) <= delta_agreement(reference, case.base, SVD_DEPTH, steps=4)


def test_bake_equals_the_chained_patches_and_keeps_dtypes(lyco_cases):
    base = {k: v.half() if k.startswith("fc") else v for k, v in lyco_cases["lycoris-oft"].base.items()}
    oft = lyco_core.load_adapter(lyco_cases["lycoris-oft"].path)
    loha = lyco_core.load_adapter(lyco_cases["lycoris-loha"].path)
    seen = []
    baked, report = bake(base, [loha, oft], [0.6, 1.0], progress=lambda done, total: seen.append((done, total)))
    assert set(baked) == set(base) and all(baked[k].dtype == base[k].dtype for k in base)
    chained = {**base, **loha.patch(base, 0.6)}
    chained.update(oft.patch(chained, 1.0))
    assert all(torch.equal(baked[k], chained[k]) for k in base)
    assert seen[-1] == (8, 8) and [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.parametrize("operation", ["to-lora", "merge", "extract"])
def test_progress_can_cancel(operation, lyco_cases):
    case = lyco_cases["lycoris-loha"]
    adapter = lyco_core.load_adapter(case.path)

    class Cancelled(Exception):
        pass

    def progress(done, total):
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        if operation == "to-lora":
            to_lora(adapter, RankPolicy(rank=2), progress=progress)
        elif operation == "merge":
            merge([adapter, adapter], [1, 1], RankPolicy(rank=2), progress=progress)
        else:
            extract(case.base, {**case.base, **adapter.patch(case.base)}, RankPolicy(rank=2), progress=progress)
