-- A table-heavy Lua workload for comparing lua5.4 on glibc's malloc and on
-- magpie (tests/real_programs.rs). Lua's allocator is realloc/free. Output is
-- deterministic (own PRNG, sorted keys).
local seed = 12345
local function rand(n)
  seed = (seed * 1103515245 + 12345) % 2147483648
  return seed % n
end

-- Arrays grow and shrink.
local arr = {}
for i = 1, 300000 do arr[i] = i * 3 end
for i = 300000, 150001, -1 do arr[i] = nil end
local s = 0
for i = 1, #arr do s = s + arr[i] end
print("array", #arr, s)

-- Hash tables with string keys, deletes, reinserts.
local t = {}
for i = 1, 200000 do t["key" .. (i % 50000) .. "_" .. rand(10)] = i end
local n = 0
for k, v in pairs(t) do n = n + 1 end
for k in pairs(t) do if #k % 2 == 0 then t[k] = nil end end
local m = 0
for k, v in pairs(t) do m = m + 1 end
print("hash", n, m)

-- Objects with metatables, closures.
local Point = {}
Point.__index = Point
function Point.new(x, y) return setmetatable({x = x, y = y}, Point) end
function Point.__add(a, b) return Point.new(a.x + b.x, a.y + b.y) end
local acc = Point.new(0, 0)
for i = 1, 200000 do acc = acc + Point.new(i % 7, i % 11) end
print("points", acc.x, acc.y)
local fns = {}
for i = 1, 50000 do fns[i] = function(x) return x + i end end
local fs = 0
for i = 1, #fns do fs = fs + fns[i](1) end
print("closures", fs)

-- Strings: concat, table.concat, gsub, string.format.
local parts = {}
for i = 1, 100000 do parts[#parts + 1] = string.format("%06d:%x", i, i * i % 9973) end
local big = table.concat(parts, ";")
local cnt = select(2, big:gsub(":", ":"))
print("string", #big, cnt, big:sub(100000, 100030))
local words = {}
for w in big:gmatch("(%d+):") do words[#words + 1] = w end
print("gmatch", #words, words[77777])

-- Sorting records.
local recs = {}
for i = 1, 100000 do recs[i] = {k = rand(100000), name = "r" .. i} end
table.sort(recs, function(a, b) if a.k ~= b.k then return a.k < b.k end return a.name < b.name end)
print("sorted", recs[1].name, recs[50000].name, recs[#recs].name)

-- Nested tables and a tree.
local function tree(d)
  if d == 0 then return {v = 1} end
  return {l = tree(d - 1), r = tree(d - 1), v = d}
end
local function sum(tr) if not tr then return 0 end return tr.v + sum(tr.l) + sum(tr.r) end
local total = 0
for i = 1, 5 do total = total + sum(tree(15)) end
print("tree", total)
collectgarbage()
local keys = {}
for k in pairs(t) do keys[#keys + 1] = k end
table.sort(keys)
print("keys", #keys, keys[1], keys[#keys])
