"""How fast the costs of a recipe come without building or training it.

    python bench/costs.py [SPACE] [--quick] [--recipes 10000]

Builds the space's architecture (fresh weights), then times: the shape-only setup (tracing the
pruning groups once), the per-block cost table of every configuration, the cost of random
recipes from the table, and the whole-architecture count on the meta device of a few of
them; and checks the table against the whole count and against really built candidates.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.samplers import machine  # noqa: E402
from searchcomp.candidate import Recipe, build  # noqa: E402
from searchcomp.config import load_space  # noqa: E402
from searchcomp.measure import compute_size_mib, count_flops, count_params  # noqa: E402
from searchcomp.models import build_model, find_blocks, find_head, input_shape  # noqa: E402
from searchcomp.predict.costs import ShapeCosts  # noqa: E402
from searchcomp.predict.layout import Layout  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("space", nargs="?", default="spaces/resnet18-fashion.yaml")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--recipes", type=int, default=10000)
    args = p.parse_args()
    space = load_space(args.space, quick=args.quick)
    print(machine())
    model = build_model(space.model).eval()
    blocks = find_blocks(model, space)
    head, _ = find_head(model, space)
    shape = input_shape(space.model)
    t0 = time.perf_counter()
    costs = ShapeCosts(model, blocks, head, shape, space.blocks.prune_round_to)
    t_setup = time.perf_counter() - t0
    layout = Layout.from_blocks(blocks, space.blocks.head)
    t0 = time.perf_counter()
    table = costs.table(layout)
    t_table = time.perf_counter() - t0
    configs = sum(int(np.prod([len(v) for v in vs])) for vs in layout.values)
    rows = layout.random_rows(np.random.default_rng(0), args.recipes)
    t0 = time.perf_counter()
    pred = table.predict(rows)
    t_row = (time.perf_counter() - t0) / len(rows)
    exact_ms, worst = [], 0.0
    for i, row in enumerate(rows[:10]):
        recipe = Recipe.from_dict(layout.decode(row))
        t0 = time.perf_counter()
        ex = costs.exact(recipe)
        exact_ms.append(1e3 * (time.perf_counter() - t0))
        worst = max(worst, *(abs(pred[k][i] - v) / v for k, v in ex.items()))
    built_s, built_worst = [], 0.0
    for i, row in enumerate(rows[:3]):
        recipe = Recipe.from_dict(layout.decode(row))
        t0 = time.perf_counter()
        m = build(model, recipe, blocks, head, torch.randn(8, *shape)).model
        real = {"params": count_params(m), "size_mib": compute_size_mib(m),
                "flops": count_flops(m, shape)}
        built_s.append(time.perf_counter() - t0)
        built_worst = max(built_worst, *(abs(pred[k][i] - v) / v for k, v in real.items()))
    print(f"space {space.file}{' (quick)' if args.quick else ''}: {len(blocks)} blocks, "
          f"{configs} block configurations, {layout.size():.3g} recipes")
    print(f"setup (trace the pruning groups once)        {1e3 * t_setup:9.1f} ms")
    print(f"cost table (every block configuration)       {1e3 * t_table:9.1f} ms")
    print(f"one recipe from the table                    {1e6 * t_row:9.3f} us "
          f"(mean over {len(rows)})")
    print(f"one recipe counted on the meta device        {statistics.median(exact_ms):9.1f} ms "
          "(median of 10)")
    print(f"building, initialising and counting for real {statistics.median(built_s):9.1f} s "
          "(median of 3)")
    print(f"largest relative difference: table vs meta count {worst:.1e}, "
          f"table vs built model {built_worst:.1e}")


if __name__ == "__main__":
    main()
