-- wrk script for the soak (tools/serve_soak.sh): a mix of valid and hostile requests, in a fixed rotation per
-- connection, from the files in $FIXTURES (tools/serve_fixtures.py). Prints the count of each status.
local dir = os.getenv("FIXTURES")
local function read(name)
  local f = assert(io.open(dir .. "/" .. name, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "statuses.lua")

function init(args)
  counts = {}
  local good = read(os.getenv("GOOD") or "fmnist.png")
  local boundary = "soak-boundary-1"
  local part = function(name, bytes)
    return "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"image\"; filename=\"" .. name ..
      "\"\r\nContent-Type: image/png\r\n\r\n" .. bytes .. "\r\n"
  end
  local multi = part("a.png", good) .. part("b.png", good) .. "--" .. boundary .. "--\r\n"
  local octet = { ["Content-Type"] = "application/octet-stream" }
  reqs = {
    wrk.format("POST", "/v1/predict", octet, good),
    wrk.format("POST", "/v1/predict?topk=3&logits=true", octet, good),
    wrk.format("POST", "/v1/predict", { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }, multi),
    wrk.format("POST", "/v1/predict", octet, read("garbage.bin")),
    wrk.format("POST", "/v1/predict", octet, read("truncated.png")),
    wrk.format("POST", "/v1/predict", octet, read("huge-dims.png")),
    wrk.format("POST", "/v1/predict", octet, ""),
    wrk.format("POST", "/v1/predict?topk=zero", octet, good),
    wrk.format("POST", "/v1/predict", { ["Content-Type"] = "multipart/form-data; boundary=x" }, "--x\r\nbroken"),
    wrk.format("GET", "/v1/predict"),
    wrk.format("DELETE", "/v1/model"),
    wrk.format("GET", "/wp-admin/../../etc/passwd"),
    wrk.format("GET", "/v1/model"),
    wrk.format("GET", "/healthz"),
  }
  if os.getenv("OVERSIZED") then
    table.insert(reqs, wrk.format("POST", "/v1/predict", octet, read("oversized.bin")))
  end
  i = 0
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end
