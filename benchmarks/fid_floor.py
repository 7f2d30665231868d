"""The real-data FID floor: N random training images against the test split, in the classifier's features.

    python benchmarks/fid_floor.py --data-dir ../shared/data 5000 10000
"""
import argparse

from tinydiff_cli.evaluation.classifier import get_classifier
from tinydiff_cli.data.load import load_dataset
from tinydiff_cli.evaluation.scorer import Scorer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int, nargs="+")
    parser.add_argument("--dataset", default="mnist", help="mnist, fashion-mnist or a folder of images")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seeds", type=int, default=1, help="repeat with this many subsets to show the spread")
    args = parser.parse_args()
    data = load_dataset(args.dataset, args.data_dir)
    classifier = get_classifier(data, args.data_dir)
    scorer = Scorer(classifier, data)
    print(f"classifier test accuracy {classifier.test_accuracy:.4f}")
    for n in args.n:
        floors = [scorer.real_floor(n, seed=seed) for seed in range(args.seeds)]
        print(f"N={n}: real-data floor FID " + ", ".join(f"{f:.3f}" for f in floors))


if __name__ == "__main__":
    main()
