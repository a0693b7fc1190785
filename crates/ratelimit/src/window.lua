-- The sliding window with sub-buckets of apitoken_domain::ratelimit::window,
-- over several keys at once, atomically: a request is counted in every key
-- or in none.
--
-- KEYS: one hash per limit.
-- ARGV[1]: now in microseconds, or -1 for Redis's own clock (TIME), which
--          every replica then shares.
-- ARGV[2]: buckets per window (K).
-- ARGV[3]: 1 to count the request when every key allows it, 0 to only look.
-- ARGV[4]: 1 to mark bursts (the failed-authentication throttle).
-- Then for each key i: ARGV[3 + 2i] its limit, ARGV[4 + 2i] the width of
-- one of its buckets in microseconds.
--
-- A hash holds: s (accepted within the look-back), o (oldest bucket kept),
-- l (newest bucket), x (a burst was reported and the count has not emptied
-- since), and one field per bucket index with its count. It expires when
-- its newest bucket leaves the look-back.
--
-- Reply: {all, then per key: fits, remaining, reset_in, retry_in, started},
-- times in microseconds from now, retry_in -1 when the key allows.
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local k = tonumber(ARGV[2])
local consume = ARGV[3] == '1'
local bursts = ARGV[4] == '1'

local function field(bucket)
  return string.format('%d', bucket)
end

local states = {}
local all = 1
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[3 + 2 * i])
  local width = tonumber(ARGV[4 + 2 * i])
  local h = redis.call('HMGET', key, 's', 'o', 'l', 'x')
  local total = tonumber(h[1]) or 0
  local oldest = tonumber(h[2])
  local newest = tonumber(h[3])
  local burst = h[4] == '1'
  local bucket = math.floor(now / width)
  -- A clock that steps back stands still.
  if newest and newest > bucket then
    bucket = newest
  end
  local keep = bucket - k
  if newest and newest < keep then
    -- Everything left the look-back.
    redis.call('DEL', key)
    total, oldest, newest, burst = 0, nil, nil, false
  elseif oldest and oldest < keep then
    for j = oldest, keep - 1 do
      local count = redis.call('HGET', key, field(j))
      if count then
        total = total - tonumber(count)
        redis.call('HDEL', key, field(j))
      end
    end
    oldest = keep
    redis.call('HSET', key, 's', total, 'o', field(oldest))
  end
  if total <= 0 and burst then
    -- The count emptied: a later burst is a new one.
    redis.call('HDEL', key, 'x')
    burst = false
  end
  local fits = total < limit
  if not fits then
    all = 0
  end
  states[i] = {key, limit, width, total, oldest, newest, bucket, fits, burst}
end

local reply = {all}
for i, state in ipairs(states) do
  local key, limit, width, total, oldest, newest, bucket, fits, burst = unpack(state)
  local started = 0
  if all == 1 and consume then
    redis.call('HINCRBY', key, field(bucket), 1)
    total = total + 1
    oldest = oldest or bucket
    newest = bucket
    redis.call('HSET', key, 's', total, 'o', field(oldest), 'l', field(newest))
    if bursts and total >= limit and not burst then
      redis.call('HSET', key, 'x', '1')
      started = 1
    end
    -- Gone when its newest bucket leaves the look-back (plus a second).
    local expires = (newest + k + 1) * width - now
    redis.call('PEXPIRE', key, math.ceil(expires / 1000) + 1000)
  end
  local remaining = limit - total
  if not fits then
    remaining = 0
  elseif not consume or all == 0 then
    -- Looked at, or not counted: what is left after one more.
    remaining = limit - total - 1
  end
  local reset_in = 0
  if newest then
    reset_in = (newest + k + 1) * width - now
  end
  local retry_in = -1
  if not fits then
    retry_in = reset_in
    local left = total
    for j = oldest, newest do
      local count = tonumber(redis.call('HGET', key, field(j)) or '0')
      left = left - count
      if left < limit then
        retry_in = (j + k + 1) * width - now
        break
      end
    end
  end
  local flag = 0
  if fits then
    flag = 1
  end
  reply[#reply + 1] = flag
  reply[#reply + 1] = remaining
  reply[#reply + 1] = reset_in
  reply[#reply + 1] = retry_in
  reply[#reply + 1] = started
end
return reply
