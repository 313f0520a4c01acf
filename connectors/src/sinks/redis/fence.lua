-- sluice: epoch-fenced writes of one chunk of records (Redis/Valkey >= 5).
--
-- ARGV[1] mode ("hash" | "string"), ARGV[2] fence (decimal digits),
-- ARGV[3] ttl in ms ("0": none), ARGV[4] "1" if KEYS[1] is a totals key.
-- Then per record i (0-based): ARGV[5+3i] op ("u" upsert | "d" delete),
-- ARGV[6+3i] hash field ("" in string mode), ARGV[7+3i] value.
-- KEYS: [totals], then per record the data key and its fence key.
--
-- A record is written only if the fence stored beside it is <= ARGV[2], so
-- a replayed older write never overwrites a newer one; an equal fence
-- rewrites the same value (idempotent re-delivery). The totals key moves by
-- (new - old) of every applied write, so it stays the exact sum.
-- Returns one status per record: 1 written, 0 stale, or an error text.

local hash = ARGV[1] == 'hash'
local fence = ARGV[2]
local ttl = tonumber(ARGV[3])
local has_totals = ARGV[4] == '1'
local base = has_totals and 1 or 0

-- fence comparison on decimal strings without leading zeros, byte-wise so
-- that the server's collation locale cannot matter
local function le(a, b)
  if #a ~= #b then return #a < #b end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return true
end

local function is_err(r)
  return type(r) == 'table' and r.err ~= nil
end

local function is_int(s)
  return type(s) == 'string' and string.match(s, '^%-?%d+$') ~= nil and #s < 19
end

local totals = has_totals and KEYS[1] or nil
local float_totals = false
if totals then
  local t = redis.pcall('GET', totals)
  if is_err(t) then
    return redis.error_reply('sluice: totals key ' .. totals .. ': ' .. t.err)
  end
  if t and not tonumber(t) then
    return redis.error_reply('sluice: totals key ' .. totals .. ' holds ' .. t .. ', not a number')
  end
  float_totals = t and not is_int(t)
end

local function move_totals(old, new)
  if old == new then return nil end
  if not float_totals and (old == false or is_int(old)) and (new == false or is_int(new)) then
    if old then
      local r = redis.pcall('DECRBY', totals, old)
      if is_err(r) then return r.err end
    end
    if new then
      local r = redis.pcall('INCRBY', totals, new)
      if is_err(r) then return r.err end
    end
    return nil
  end
  local delta = (tonumber(new) or 0) - (tonumber(old) or 0)
  local r = redis.pcall('INCRBYFLOAT', totals, tostring(delta))
  if is_err(r) then return r.err end
  float_totals = true
  return nil
end

local function apply(i)
  local key, fkey = KEYS[base + 2 * i + 1], KEYS[base + 2 * i + 2]
  local op, field, value = ARGV[5 + 3 * i], ARGV[6 + 3 * i], ARGV[7 + 3 * i]
  local stored
  if hash then stored = redis.pcall('HGET', fkey, field) else stored = redis.pcall('GET', fkey) end
  if is_err(stored) then return stored.err end
  if stored and string.match(stored, '^%d+$') and not le(stored, fence) then return 0 end
  local old = false
  if totals then
    if hash then old = redis.pcall('HGET', key, field) else old = redis.pcall('GET', key) end
    if is_err(old) then return old.err end
    if old and not tonumber(old) then old = false end
    local new = false
    if op == 'u' then new = value end
    local e = move_totals(old, new)
    if e then return e end
  end
  local r
  if op == 'd' then
    if hash then r = redis.pcall('HDEL', key, field) else r = redis.pcall('DEL', key) end
  else
    if hash then r = redis.pcall('HSET', key, field, value) else r = redis.pcall('SET', key, value) end
  end
  if is_err(r) then return r.err end
  if hash then r = redis.pcall('HSET', fkey, field, fence) else r = redis.pcall('SET', fkey, fence) end
  if is_err(r) then return r.err end
  if ttl > 0 then
    redis.pcall('PEXPIRE', key, ttl)
    redis.pcall('PEXPIRE', fkey, ttl)
  end
  return 1
end

local out = {}
local n = (#ARGV - 4) / 3
for i = 0, n - 1 do
  out[i + 1] = apply(i)
end
return out
