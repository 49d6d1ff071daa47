# Allocation-heavy python3 workload for the shim overhead benchmark (Benchmarks/Python, issue 10
# goal 3): with PYTHONMALLOC=malloc every object is a malloc. Builds and drops dicts, lists,
# strings and tuples through a few levels of Python calls (deep interpreter stacks), keeps a live
# window so that the heap is not trivially recycled. usage: workload.py [rounds (default 30)]
import sys


def leaf(i):
    return {"k": str(i), "v": [i, i + 1, (i, str(i * 2))]}


def middle(n, base):
    return [leaf(base + i) for i in range(n)]


def outer(rounds):
    keep = []
    total = 0
    for r in range(rounds):
        batch = middle(20000, r * 20000)
        total += sum(len(d["k"]) for d in batch)
        keep.append(batch)
        if len(keep) > 5:
            keep.pop(0)
    return total


if __name__ == "__main__":
    print(outer(int(sys.argv[1]) if len(sys.argv) > 1 else 30))
