// The server's one configuration struct (STYLE.md habit 9). Every knob has a default here and
// is filled, in increasing precedence, from an optional JSON config file (`--config FILE`,
// keys are the flag names without dashes), environment variables (SEMSHARE_ + the flag name in
// upper case with dashes as underscores, e.g. SEMSHARE_MAX_QUEUE) and command-line flags
// (`--max-queue 64` or `--max-queue=64`). `semshare-server --help` prints the table below;
// docs/deploy.md and the Kubernetes manifests use the same names (tests/deploy checks them).
#ifndef SEMSHARE_SERVER_CONFIG_H_
#define SEMSHARE_SERVER_CONFIG_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/reuse/reuse_config.h"

namespace semshare::server {

struct ServerConfig {
  std::string model;       // GGUF file or HF directory; empty = default
  std::string model_name;  // metrics label; empty = the file or directory name without .gguf
  std::string listen = "127.0.0.1:50051";         // gRPC address
  std::string metrics_listen = "127.0.0.1:9464";  // Prometheus /metrics address; "" = off
  std::string http_listen = "127.0.0.1:8000";     // OpenAI-compatible HTTP API; "" = off
  std::string backend = "cpu";                    // cpu | cuda
  int32_t threads = 0;                            // compute threads; 0 = all cores
  int32_t workers = 1;     // front workers: requests tokenized and looked up at once
  int32_t max_queue = 64;  // requests waiting for a front worker / beyond max_num_seqs
  // The engine loop (serving/engine_loop.h): continuous batching.
  int64_t max_batch_tokens = 256;  // rows per iteration: decode rows + prefill chunk tokens
  int32_t max_num_seqs = 64;       // requests running in the loop at once
  // KV budget; 0 = 1/4 of RAM (<= 4 GiB) on the CPU, or on CUDA the pages that fit in 90% of
  // the device memory free after the weights less one iteration's scratch
  // (serving/batch_runner.h, NewCudaBatchRunner).
  int64_t kv_cache_bytes = 0;
  int64_t max_prompt_tokens = 0;  // 0 = the model's context length
  int32_t max_new_tokens = 1024;
  int32_t default_max_tokens = 128;              // when a request leaves max_tokens at 0
  int64_t max_message_bytes = int64_t{4} << 20;  // gRPC receive limit
  int32_t max_stop_strings = 16;
  int32_t max_stop_bytes = 256;
  int32_t max_messages = 256;
  int32_t drain_seconds = 25;  // SIGTERM: finish in-flight work up to this long
  // Reference store.
  int64_t cache_memory_bytes = int64_t{1} << 30;
  std::string cache_dir;  // "" = no disk tier
  int64_t cache_disk_bytes = int64_t{16} << 30;
  std::string redis;              // "" = no Redis tier
  int32_t redis_ttl_seconds = 0;  // 0 = no expiry
  // The lossy semantic path's gate (exact-prefix reuse applies at any length). 960: from ~1k
  // tokens (the bench's "1k" prompts are 999-1,019 tokens), with exact runs first and the
  // recompute floor, semantic reuse holds SmolLM2-135M's quality on MRPC-built pairs; at 512 it
  // does not (docs/server.md, docs/benchmarks.md "A recompute floor").
  int32_t min_reuse_tokens = 960;
  // engine::ReuseConfig::hybrid_selective_min_tokens (0: never; its default and why there).
  int32_t hybrid_selective_min_tokens = engine::ReuseConfig{}.hybrid_selective_min_tokens;
  // engine::ReuseConfig::run_start_tokens (0: none; its default and why there).
  int32_t run_start_tokens = engine::ReuseConfig{}.run_start_tokens;
  // engine::ReuseConfig::recompute_min_tokens (0: the paper's schedule; its default and why).
  int32_t recompute_min_tokens = engine::ReuseConfig{}.recompute_min_tokens;
  // engine::ReuseConfig::exact_run_tokens (0: off; its default and why there).
  int32_t exact_run_tokens = engine::ReuseConfig{}.exact_run_tokens;
  float similarity_threshold = 0.8f;
  int32_t lookup_candidates = 4;  // store candidates ranked per lookup
  // Security.
  std::string api_keys;  // "" = no auth, loopback bind only
  std::string tls_cert, tls_key, tls_client_ca;
  std::string log_level = "info";  // debug | info | warning | error
};

// Parses argv[1..] over environment `env` (name -> value, e.g. from environ) and the config
// file named by --config / SEMSHARE_CONFIG. InvalidArgument names the offending flag, variable
// or key and what it accepts. `help` is set (and the rest left at defaults) for --help.
absl::StatusOr<ServerConfig> ParseServerConfig(int argc, char** argv,
                                               const std::map<std::string, std::string>& env,
                                               bool* help);
// The environment of this process as a map (for ParseServerConfig).
std::map<std::string, std::string> ProcessEnvironment();
// One line per flag: "  --name VALUE  help (default: x)".
std::string ServerHelp();
// Cross-field checks: positive limits, TLS key with cert, client CA only with TLS, backend
// name, address syntax; a non-loopback listen address without an API-keys file is refused.
absl::Status ValidateServerConfig(const ServerConfig& c);
// True when a "host:port" address binds only the loopback interface.
bool IsLoopbackAddress(const std::string& address);

}  // namespace semshare::server

#endif  // SEMSHARE_SERVER_CONFIG_H_
