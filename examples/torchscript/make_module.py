#!/usr/bin/python3
"""Writes a small TorchScript classifier for 28x28 Fashion-MNIST images.

    /usr/bin/python3 examples/torchscript/make_module.py net.pt [--hidden 64] [--seed 0]

The module's forward takes a float batch [B, 1, 28, 28] (any shape with B rows
and 784 values per row) and returns logits [B, 10]. hanse trains its parameters
(here "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"); make the job's
initial weights from it with

    hanse-worker init-model --arch torchscript --module net.pt -o init.safetensors

Keep parameters float32, and the class in a file: torch.jit.script reads the
source of forward(), which `python3 -c` does not have.
"""
import argparse

import torch
from torch import nn


class FashionMlp(nn.Module):
    def __init__(self, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(x)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="where to write the TorchScript module (.pt)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights (default 0)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    module = torch.jit.script(FashionMlp(args.hidden).float())
    module.save(args.output)
    names = ", ".join(f"{n} {list(p.shape)}" for n, p in module.named_parameters())
    print(f"wrote {args.output}: {names}")


if __name__ == "__main__":
    main()
