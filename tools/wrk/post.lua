-- wrk script: POST the file named by $BODY to /v1/predict (tools/serve_load.sh).
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.method = "POST"
wrk.path = "/v1/predict"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"

-- The count of each status and the latency percentiles, as lines serve_load.sh reads.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "statuses.lua")
report_latency = true
function init(args)
  counts = {}
end
