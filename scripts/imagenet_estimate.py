"""Print the sizes behind docs/distributed.md's worked estimate of an ImageNet-sized job.

    python scripts/imagenet_estimate.py [--members 10] [--ranks 32]

Pure arithmetic from the job's shape (no measurement): ImageNet-1k train 1,281,167 images, K =
1000, ResNet-50 members (25.6 M parameters), images stored as uint8 224×224×3.
"""

from __future__ import annotations

import argparse

GB = 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_281_167)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--ranks", type=int, default=32, help="GPUs in the job (4 nodes × 8)")
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--parameters", type=float, default=25.6e6, help="one member's")
    args = parser.parse_args()
    n, k, m = args.images, args.classes, args.members
    pixels = 224 * 224 * 3
    rows = [
        ("training images as uint8 [N, 3, 224, 224]", n * pixels / GB, "on disk; read per batch"),
        ("teacher cache, train split, float16 [N, M, K]", n * m * k * 2 / GB, "teacher/train.npy"),
        ("teacher cache, train split, float32", n * m * k * 4 / GB, "teacher.cache_dtype=float32"),
        ("EnD² statistic per temperature, float32 [N, K]", n * k * 4 / GB, "reduced form"),
        ("teacher rows per global batch, float16 [B, M, K]", args.batch * m * k * 2 / GB, ""),
        ("one member's weights + grads + Adam (float32)", args.parameters * 4 * 4 / GB, "per rank"),
        (
            f"the {m} members trained as one batched module",
            m * args.parameters * 4 * 4 / GB,
            "per rank: the whole ensemble on each GPU",
        ),
    ]
    print(
        f"ImageNet-sized job: N = {n:,}, K = {k}, M = {m}, {args.ranks} ranks, batch {args.batch}"
    )
    print()
    print("| quantity | GB | note |")
    print("|---|---:|---|")
    for name, size, note in rows:
        print(f"| {name} | {size:,.2f} | {note} |")
    shard = n * m * k * 2 / GB / args.ranks
    print()
    print(f"teacher cache shard per rank if written in {args.ranks} shards: {shard:.2f} GB")
    print(
        f"teacher passes: {m} members × 1 forward over N ≈ {m / 3:.1f} training-epoch "
        "equivalents (a forward pass costs about a third of a training step)"
    )


if __name__ == "__main__":
    main()
