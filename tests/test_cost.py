"""Cost accounting against the paper's own arithmetic (docs/recipe.md §6, Table 3)."""

import pytest

from osora.config import load_settings
from osora.cost import Resources, cost_metrics, gpu_price

COST = load_settings().cost


def test_stage_one_of_the_paper_costs_what_table_3_says():
    # 256px T2V: 224 GPUs, 2240 GPU-days at $2/GPU-hour → $107.5k.
    wall_s = 2240 / 224 * 24 * 3600
    m = cost_metrics(wall_s, Resources("NVIDIA H200", 224, 16), COST)
    assert m["cost.gpu_hours"] == pytest.approx(2240 * 24)
    assert m["cost.usd"] == pytest.approx(107_520)


def test_whole_paper_recipe_is_about_200k_usd():
    days = {"stage1": (2240, 224), "stage2": (384, 192), "stage3": (1536, 192)}
    total = sum(
        cost_metrics(gpu_days / n * 86400, Resources("NVIDIA H200", n, 16), COST)["cost.usd"]
        for gpu_days, n in days.values()
    )
    assert total == pytest.approx(199_680)  # Table 3: 199.6k


def test_cpu_stage_is_charged_per_core_hour():
    m = cost_metrics(1800.0, Resources("cpu", 0, 2), COST)
    assert m["cost.gpu_hours"] == 0.0
    assert m["cost.cpu_hours"] == pytest.approx(1.0)
    assert m["cost.usd"] == pytest.approx(COST.cpu_core_hour_usd)


def test_unknown_gpu_names_the_price_table_and_the_fix():
    with pytest.raises(ValueError, match=r"'NVIDIA L40S'.*params/cost.yaml.*L40S: 2.0"):
        gpu_price("NVIDIA L40S", COST)
    assert gpu_price("NVIDIA H100 80GB HBM3", COST) == 2.0
