"""An object-heavy workload for comparing CPython on glibc's malloc and on
magpie (tests/real_programs.rs): dicts, lists, sets, classes, closures,
strings, a JSON round trip, sorting, big ints, deletes and cyclic garbage.
Deterministic output: every collection printed is ordered or reduced."""
import collections
import gc
import hashlib
import json
import random
import sys

rng = random.Random(12345)


class Node:
    __slots__ = ("key", "value", "children", "parent")

    def __init__(self, key, value, parent=None):
        self.key = key
        self.value = value
        self.children = []
        self.parent = parent


class Account:
    def __init__(self, name, balance):
        self.name = name
        self.balance = balance
        self.history = []

    def move(self, other, amount):
        self.balance -= amount
        other.balance += amount
        self.history.append(("out", other.name, amount))
        other.history.append(("in", self.name, amount))


def digest(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


# 1. A tree of 200k nodes with parent links (cycles), walked and summed.
root = Node("root", 0)
nodes = [root]
for i in range(100_000):
    parent = nodes[rng.randrange(len(nodes))]
    n = Node(f"n{i}", i * 7 % 1009, parent)
    parent.children.append(n)
    nodes.append(n)
total, depth_max, stack = 0, 0, [(root, 0)]
while stack:
    n, d = stack.pop()
    total += n.value
    depth_max = max(depth_max, d)
    stack.extend((c, d + 1) for c in n.children)
print("tree", len(nodes), total, depth_max)
del nodes, root, stack, n
ring = []
for i in range(20_000):
    d = {"i": i}
    d["self"] = d
    ring.append([d, ring])
del ring, d
print("gc collected rings:", gc.collect() >= 20_000)

# 2. Dicts: word counts, nested dicts, deletes and re-inserts.
words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 8))) for _ in range(150_000)]
counts = collections.Counter(words)
print("distinct words", len(counts), "top", counts.most_common(5))
index = {}
for i, w in enumerate(words):
    index.setdefault(w[0], {}).setdefault(len(w), []).append(i)
print("index", sorted((k, sorted((l, len(v)) for l, v in d.items())) for k, d in index.items())[:3])
for w in list(counts):
    if counts[w] < 3:
        del counts[w]
for i in range(20_000):
    counts[f"new{i}"] = i
print("after deletes", len(counts), sum(counts.values()))

# 3. Lists: sorting with keys, slicing, comprehensions, list of tuples.
records = [(rng.random(), rng.randint(0, 1000), f"r{i}") for i in range(120_000)]
records.sort()
by_int = sorted(records, key=lambda r: (r[1], r[2]))
print("sorted", records[0][2], records[-1][2], by_int[0][2], by_int[-1][2])
chunks = [records[i:i + 1000] for i in range(0, len(records), 1000)]
print("chunks", len(chunks), sum(len(c) for c in chunks))
flat = [x for c in chunks for x in c if x[1] % 2 == 0]
print("even", len(flat))
del records, by_int, chunks, flat

# 4. Classes with dict instances and method calls.
accounts = [Account(f"acct{i}", 1000) for i in range(5000)]
for _ in range(60_000):
    a, b = rng.sample(accounts, 2)
    a.move(b, rng.randint(1, 50))
print("accounts", sum(a.balance for a in accounts), max(len(a.history) for a in accounts))
richest = sorted(accounts, key=lambda a: (-a.balance, a.name))[:3]
print("richest", [(a.name, a.balance) for a in richest])

# 5. JSON round trip of a large nested document.
doc = {
    "users": [
        {
            "id": i,
            "name": f"user{i}",
            "tags": [f"t{j}" for j in range(i % 7)],
            "score": round(rng.random() * 100, 3),
            "meta": {"active": i % 3 == 0, "ref": None, "nested": {"x": [i, i * 2, str(i)]}},
        }
        for i in range(15_000)
    ]
}
text = json.dumps(doc, sort_keys=True)
back = json.loads(text)
print("json", len(text), back == doc, digest(back)[:16])
pretty = json.dumps(back["users"][:200], indent=2, sort_keys=True)
print("pretty", len(pretty), json.loads(pretty) == doc["users"][:200])
del doc, back, text, pretty

# 6. Strings: building, joining, splitting, formatting, bytes.
parts = []
for i in range(100_000):
    parts.append(f"{i:06d}:{i * i % 9973:x}")
s = ";".join(parts)
print("string", len(s), s.count(":"), hashlib.md5(s.encode()).hexdigest())
pieces = s.split(";")
print("split", len(pieces), pieces[12345])
b = bytearray()
for p in pieces[:50_000]:
    b += p.encode() * 3
print("bytes", len(b), hashlib.sha1(bytes(b)).hexdigest())
del parts, s, pieces, b

# 7. Sets and frozensets, big ints, closures, generators.
sa = {rng.randrange(1_000_000) for _ in range(200_000)}
sb = {rng.randrange(1_000_000) for _ in range(200_000)}
print("sets", len(sa & sb), len(sa | sb), len(sa ^ sb), sum(sorted(sa - sb)[:10]))
fs = {frozenset((i, i + 1, i * 2)) for i in range(50_000)}
print("frozensets", len(fs))
fact = 1
for i in range(1, 3000):
    fact *= i
print("bigint bits", fact.bit_length(), fact % 1_000_000_007)
adders = [(lambda k: (lambda x: x + k))(k) for k in range(10_000)]
print("closures", sum(f(1) for f in adders))
print("generator", sum(x * x for x in range(300_000) if x % 3 == 0))

# 8. Deque and heap churn.
import heapq

dq = collections.deque()
heap = []
for i in range(150_000):
    dq.append((i, str(i)))
    heapq.heappush(heap, (rng.random(), i))
    if i % 3 == 0:
        dq.popleft()
        heapq.heappop(heap)
print("deque", len(dq), dq[0][1], "heap", len(heap), heap[0][1])
print("done", sys.version_info[:2] >= (3, 0))
