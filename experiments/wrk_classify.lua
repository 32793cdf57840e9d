-- wrk script: POSTs the PNG files named in $PNG_FILES (space-separated) to $WRK_PATH (default
-- /v1/models/fashion-mnist/classify) in turn, each request formatted once at start.
--   PNG_FILES="$(echo models/fashion-mnist/samples/*.png)" wrk -t1 -c1 -d5s --latency \
--     -s experiments/wrk_classify.lua http://127.0.0.1:8080
local path = os.getenv("WRK_PATH") or "/v1/models/fashion-mnist/classify"
local reqs = {}
for name in string.gmatch(os.getenv("PNG_FILES") or "", "%S+") do
  local f = assert(io.open(name, "rb"))
  local body = f:read("*a")
  f:close()
  reqs[#reqs + 1] = wrk.format("POST", path, { ["content-type"] = "image/png" }, body)
end
assert(#reqs > 0, "PNG_FILES names no files")
local n = 0
request = function()
  n = n % #reqs + 1
  return reqs[n]
end
