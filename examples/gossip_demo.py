"""Gossip averaging across ranks: every rank starts from its own vector and converges to the mean.

torchrun --standalone --nproc_per_node=4 examples/gossip_demo.py [--topology ring] [--rounds 30]
"""

from __future__ import annotations

import argparse

import torch

import saddle_torch as st


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--topology", default="ring")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--numel", type=int, default=1_000_000)
    args = parser.parse_args()

    torch.set_num_threads(1)
    st.init(topology=args.topology)
    torch.manual_seed(st.rank())
    x = torch.randn(args.numel, dtype=torch.float64) + st.rank()
    topo = st.gossip.current().topology
    d0 = st.consensus_distance(x)
    if st.rank() == 0:
        print(
            f"{st.size()} ranks on {topo.name}, spectral gap {topo.spectral_gap():.4f}; "
            f"predicted contraction per round {(1 - topo.spectral_gap()) ** 2:.4f}"
        )
        print(f"{'round':>5}  {'consensus distance':>18}  {'ratio':>7}")
        print(f"{0:>5}  {d0:>18.6e}")
    prev = d0
    for t in range(1, args.rounds + 1):
        st.neighbor_average(x, inplace=True, name="x")
        d = st.consensus_distance(x)
        if st.rank() == 0 and (t <= 5 or t % 5 == 0):
            print(f"{t:>5}  {d:>18.6e}  {d / prev if prev else 0:>7.4f}")
        prev = d
    s = st.stats()
    if st.rank() == 0:
        print(
            f"rank 0 sent {s['bytes_sent'] / 2**20:.1f} MiB in {s['rounds']} rounds, "
            f"waited {s['wait_seconds']:.2f} s"
        )


if __name__ == "__main__":
    main()
