"""`visualrwkv data <sub-command>`: dataset tools.

    visualrwkv data shapes --out DIR [--train N] [--test N] [--seed S] [--image-size P] [--harder]
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="dataset tools", description=__doc__.splitlines()[0])
    data.set_defaults(func=lambda args: _print_help(data))
    sub = data.add_subparsers(dest="data_command", metavar="<sub-command>")

    shapes = sub.add_parser(
        "shapes",
        help="generate the synthetic shapes dataset (images + LLaVA JSON)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    shapes.add_argument("--out", required=True, help="output directory (created if missing)")
    shapes.add_argument("--train", type=int, default=10000, help="number of training images")
    shapes.add_argument("--test", type=int, default=500, help="number of held-out test images")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    shapes.add_argument("--questions-per-image", type=int, default=3, help="question rows per image (distinct types)")
    shapes.add_argument("--harder", action="store_true", help="the harder variant (visualrwkv ablate's): 2-6 smaller "
                        "shapes, counts up to 6, and 'find' questions that need one object found from another")
    shapes.set_defaults(func=run_shapes)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_shapes(args) -> int:
    from visualrwkv.data.shapes import HARDER, generate_shapes_dataset

    result = generate_shapes_dataset(
        args.out,
        num_train_images=args.train,
        num_test_images=args.test,
        image_size=args.image_size,
        seed=args.seed,
        questions_per_image=args.questions_per_image,
        **(HARDER if args.harder else {}),
    )
    print(
        f"wrote {result['num_train_images']} train + {result['num_test_images']} test images to "
        f"{result['image_folder']}: stage1 {result['num_stage1']} rows, stage2 {result['num_stage2']} rows, "
        f"test {result['num_test']} rows (test_multiturn: {result['num_test_conversations']} conversations)"
    )
    for name in ("stage1", "stage2", "stage2_multiturn", "stage3_questions", "test", "test_multiturn", "scenes"):
        print(f"  {name}: {result[name]}")
    return 0
