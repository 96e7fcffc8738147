-- Shared by the wrk scripts (loaded with dofile): counts each status per thread and prints, when wrk is done,
-- `statuses 200=N 400=M ...` and, where `report_latency` is set, `latency_us p50=… p90=… p99=… max=…`.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for s, n in pairs(t:get("counts")) do
      total[s] = (total[s] or 0) + n
    end
  end
  local parts = {}
  for s, n in pairs(total) do
    table.insert(parts, s .. "=" .. n)
  end
  table.sort(parts)
  io.write("statuses " .. table.concat(parts, " ") .. "\n")
  if report_latency then
    io.write(string.format("latency_us p50=%d p90=%d p99=%d max=%d\n",
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
  end
end
