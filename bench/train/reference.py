#!/usr/bin/python3
"""PyTorch reference for bench/train: the same model, data, initial weights,
batch size, optimizer and thread count as hanse's TorchTrainer, timed the same
way (the whole training loop, one epoch per repeat from the same weights).

Prints one JSON line: {"seconds": [...], "loss": last-epoch mean loss, "torch": version}.
Runs with Debian's python3-torch (/usr/bin/python3)."""
import argparse, json, struct, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", name
        b, e = info["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(raw[base + b:base + e], dtype="<f4").copy()).reshape(info["shape"])
    return out


class Mlp(nn.Module):
    def __init__(self, inp, hidden, classes):
        super().__init__()
        dims = [inp] + hidden + [classes]
        for i in range(len(dims) - 1):
            setattr(self, "fc%d" % (i + 1), nn.Linear(dims[i], dims[i + 1]))
        self.n = len(dims) - 1

    def forward(self, x):
        x = x.reshape(x.size(0), -1)
        for i in range(1, self.n):
            x = F.relu(getattr(self, "fc%d" % i)(x))
        return getattr(self, "fc%d" % self.n)(x)


class Cnn(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, classes)

    def forward(self, x):
        x = x.reshape(x.size(0), 1, 28, 28)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.reshape(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True)
    ap.add_argument("--hidden", default="")
    ap.add_argument("--features", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--init", required=True)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.from_numpy(np.fromfile(a.features, dtype="<f4")).reshape(a.n, -1)
    y = torch.from_numpy(np.fromfile(a.labels, dtype="<i8"))
    init = read_safetensors(a.init)
    classes = init["fc2.weight" if a.arch == "cnn" else "fc%d.weight" % (len([h for h in a.hidden.split(",") if h]) + 1)].shape[0]
    seconds, loss_mean = [], 0.0
    for _ in range(a.repeats):
        if a.arch == "cnn":
            model = Cnn(classes)
        else:
            model = Mlp(x.shape[1], [int(h) for h in a.hidden.split(",") if h], classes)
        model.load_state_dict(init, strict=True)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum)
        t0 = time.perf_counter()
        perm = torch.randperm(a.n)
        total, seen = 0.0, 0
        for b in range(0, a.n, a.batch):
            idx = perm[b:b + a.batch]
            xb, yb = x[idx], y[idx]
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        seconds.append(time.perf_counter() - t0)
        loss_mean = total / seen
    print(json.dumps({"seconds": seconds, "loss": loss_mean, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
