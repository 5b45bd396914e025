#include "server/config.h"

#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <variant>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/model/default_model.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace semshare::server {
namespace {

// One knob: its flag name, where it lives in ServerConfig, and its help line.
struct Knob {
  const char* name;
  std::variant<std::string ServerConfig::*, int32_t ServerConfig::*, int64_t ServerConfig::*,
               float ServerConfig::*>
      field;
  const char* value_name;
  const char* help;
  double min = 0, max = 0;  // numeric range (inclusive); ignored for strings
};

constexpr double kI32 = std::numeric_limits<int32_t>::max();
constexpr double kI64 = 9.0e18;

const std::vector<Knob>& Knobs() {
  static const std::vector<Knob> knobs = {
      {"model", &ServerConfig::model, "PATH",
       "GGUF file or Hugging Face directory (default: the installed default model, "
       "$SEMSHARE_CACHE_DIR/models/SmolLM2-135M-Instruct.Q4_1.gguf)"},
      {"model-name", &ServerConfig::model_name, "NAME",
       "the model label of every metric (empty: the model file or directory name without "
       ".gguf)"},
      {"listen", &ServerConfig::listen, "HOST:PORT", "gRPC address"},
      {"metrics-listen", &ServerConfig::metrics_listen, "HOST:PORT",
       "Prometheus /metrics HTTP address (empty: no metrics endpoint)"},
      {"http-listen", &ServerConfig::http_listen, "HOST:PORT",
       "OpenAI-compatible HTTP API address (/v1/chat/completions, /v1/completions, /v1/models, "
       "/health, /metrics; empty: off)"},
      {"backend", &ServerConfig::backend, "cpu|cuda", "compute backend"},
      {"threads", &ServerConfig::threads, "N", "compute threads (0: all cores)", 0, 4096},
      {"workers", &ServerConfig::workers, "N",
       "front workers: requests tokenized and looked up in the store at once (the engine loop "
       "computes every admitted request together)",
       1, 256},
      {"max-queue", &ServerConfig::max_queue, "N",
       "requests waiting for a front worker, and beyond --max-num-seqs for the engine loop; "
       "more get RESOURCE_EXHAUSTED",
       0, 1e6},
      {"max-batch-tokens", &ServerConfig::max_batch_tokens, "N",
       "rows per engine iteration: one per decoding request plus prefill chunks (a long prompt "
       "is prefilled in chunks so decodes never stall longer than one)",
       1, 1 << 20},
      {"max-num-seqs", &ServerConfig::max_num_seqs, "N",
       "requests running in the engine loop at once; more wait for admission", 1, 4096},
      {"kv-cache-bytes", &ServerConfig::kv_cache_bytes, "N",
       "KV cache budget of all running requests; admission waits for room and the newest "
       "request is preempted (recomputed later) when decodes run out (0: a quarter of RAM, at "
       "most 4 GiB, on the CPU; half the free GPU memory on CUDA)",
       0, kI64},
      {"max-prompt-tokens", &ServerConfig::max_prompt_tokens, "N",
       "prompt tokens at most (0: the model's context length)", 0, kI32},
      {"max-new-tokens", &ServerConfig::max_new_tokens, "N", "max_tokens a request may ask for", 1,
       kI32},
      {"default-max-tokens", &ServerConfig::default_max_tokens, "N",
       "max_tokens of a request that leaves it 0", 1, kI32},
      {"max-message-bytes", &ServerConfig::max_message_bytes, "N",
       "largest request message; larger get RESOURCE_EXHAUSTED", 1024, kI32},
      {"max-stop-strings", &ServerConfig::max_stop_strings, "N", "stop strings per request", 0,
       4096},
      {"max-stop-bytes", &ServerConfig::max_stop_bytes, "N", "bytes per stop string", 1, 65536},
      {"max-messages", &ServerConfig::max_messages, "N", "chat messages per request", 1, 1e6},
      {"drain-seconds", &ServerConfig::drain_seconds, "N",
       "on SIGTERM, finish in-flight requests for up to this long", 0, 3600},
      {"cache-memory-bytes", &ServerConfig::cache_memory_bytes, "N",
       "byte budget of the in-process reference store", 1, kI64},
      {"cache-dir", &ServerConfig::cache_dir, "DIR",
       "disk tier directory; references survive restarts (empty: no disk tier)"},
      {"cache-disk-bytes", &ServerConfig::cache_disk_bytes, "N", "byte budget of the disk tier", 1,
       kI64},
      {"redis", &ServerConfig::redis, "URL",
       "redis://host:port, or comma-separated Redis Cluster seed nodes (empty: no Redis tier)"},
      {"redis-ttl-seconds", &ServerConfig::redis_ttl_seconds, "N",
       "expiry of references in Redis (0: none)", 0, kI32},
      {"min-reuse-tokens", &ServerConfig::min_reuse_tokens, "N",
       "shorter prompts skip the lossy semantic lookup; exact-prefix reuse applies at any "
       "length (960: below ~1k tokens semantic reuse costs quality on small models, "
       "docs/server.md)",
       1, kI32},
      {"hybrid-selective-min-tokens", &ServerConfig::hybrid_selective_min_tokens, "N",
       "a remainder after an exact prefix at least this long that matches the stored turn takes "
       "the lossy selective path instead of being computed in full (0: never; docs/server.md)",
       0, kI32},
      {"run-start-tokens", &ServerConfig::run_start_tokens, "N",
       "on a semantic hit, the first N tokens of every run of reused reference rows are "
       "recomputed at every layer and never evicted (0: none; docs/server.md)",
       0, kI32},
      {"recompute-min-tokens", &ServerConfig::recompute_min_tokens, "N",
       "on a semantic hit, every layer recomputes at least N tokens (all of a shorter prompt) "
       "(0: the paper's decaying schedule alone; docs/server.md)",
       0, kI32},
      {"exact-run-tokens", &ServerConfig::exact_run_tokens, "N",
       "on a semantic hit, stretches of at least N tokens shared verbatim with the stored "
       "prompt reuse one occurrence each, token for token (0: the LSH's match as it is; "
       "docs/server.md)",
       0, kI32},
      {"similarity-threshold", &ServerConfig::similarity_threshold, "X",
       "token-level similarity a reference needs for a hit", 0.0, 1.0},
      {"lookup-candidates", &ServerConfig::lookup_candidates, "N",
       "store candidates ranked by the token matcher per lookup", 1, 64},
      {"api-keys", &ServerConfig::api_keys, "FILE",
       "lines '<key> <tenant> <role>' (role user|admin); without it the server binds loopback "
       "only"},
      {"tls-cert", &ServerConfig::tls_cert, "FILE", "server certificate chain (PEM); enables TLS"},
      {"tls-key", &ServerConfig::tls_key, "FILE", "server private key (PEM)"},
      {"tls-client-ca", &ServerConfig::tls_client_ca, "FILE",
       "CA bundle (PEM) that client certificates must chain to; enables mutual TLS"},
      {"log-level", &ServerConfig::log_level, "LEVEL", "debug|info|warning|error"},
  };
  return knobs;
}

std::string EnvName(const std::string& flag) {
  return "SEMSHARE_" + absl::AsciiStrToUpper(absl::StrReplaceAll(flag, {{"-", "_"}}));
}

std::string DefaultText(const Knob& k, const ServerConfig& d) {
  return std::visit(
      [&](auto field) -> std::string {
        using T = std::decay_t<decltype(d.*field)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return (d.*field).empty() ? "\"\"" : d.*field;
        } else {
          return absl::StrCat(d.*field);
        }
      },
      k.field);
}

// Sets knob `k` from text; `source` names where the text came from for the error.
absl::Status SetKnob(const Knob& k, const std::string& text, const std::string& source,
                     ServerConfig* c) {
  return std::visit(
      [&](auto field) -> absl::Status {
        using T = std::decay_t<decltype(c->*field)>;
        if constexpr (std::is_same_v<T, std::string>) {
          c->*field = text;
          return absl::OkStatus();
        } else {
          double v = 0;
          bool ok = false;
          if constexpr (std::is_same_v<T, float>) {
            ok = absl::SimpleAtod(text, &v) && std::isfinite(v);
          } else {
            int64_t i = 0;
            ok = absl::SimpleAtoi(text, &i);
            v = static_cast<double>(i);
          }
          if (!ok || v < k.min || v > k.max) {
            return absl::InvalidArgumentError(
                absl::StrCat(source, ": ", k.name, " must be a ",
                             std::is_same_v<T, float> ? "number" : "integer", " in [", k.min, ", ",
                             k.max, "], got '", text, "'"));
          }
          c->*field = static_cast<T>(v);
          return absl::OkStatus();
        }
      },
      k.field);
}

const Knob* FindKnob(const std::string& name) {
  for (const Knob& k : Knobs()) {
    if (name == k.name) return &k;
  }
  return nullptr;
}

absl::Status ApplyFile(const std::string& path, ServerConfig* c) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read config file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config file ", path, " is not a JSON object of flag names to values"));
  }
  for (const auto& [key, value] : j.items()) {
    const Knob* k = FindKnob(key);
    if (k == nullptr || key == "config") {
      return absl::InvalidArgumentError(absl::StrCat("config file ", path, ": unknown key '", key,
                                                     "' (keys are the flag names)"));
    }
    std::string text;
    if (value.is_string()) {
      text = value.get<std::string>();
    } else if (value.is_number() || value.is_boolean()) {
      text = value.dump();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("config file ", path, ": '", key, "' must be a string or a number"));
    }
    if (auto s = SetKnob(*k, text, "config file " + path, c); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

std::map<std::string, std::string> ProcessEnvironment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string kv(*e);
    const size_t eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return env;
}

std::string ServerHelp() {
  const ServerConfig d;
  std::string out =
      "usage: semshare-server [--flag VALUE ...]\n"
      "Every flag can also be set by the environment (SEMSHARE_<FLAG>, e.g. SEMSHARE_MAX_QUEUE)\n"
      "or by a JSON config file (--config FILE; keys are the flag names). Precedence: flag >\n"
      "environment > file > default.\n\n"
      "  --config FILE   JSON config file (default: \"\")\n";
  for (const Knob& k : Knobs()) {
    absl::StrAppend(&out, "  --", k.name, " ", k.value_name, "   ", k.help,
                    " (default: ", DefaultText(k, d), ")\n");
  }
  absl::StrAppend(&out, "  --help   this text\n");
  return out;
}

absl::StatusOr<ServerConfig> ParseServerConfig(int argc, char** argv,
                                               const std::map<std::string, std::string>& env,
                                               bool* help) {
  *help = false;
  // Flags first into a list (so the config file, named by a flag, can be applied before them).
  std::vector<std::pair<const Knob*, std::string>> flags;
  std::string config_file;
  if (auto it = env.find("SEMSHARE_CONFIG"); it != env.end()) config_file = it->second;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      *help = true;
      return ServerConfig{};
    }
    if (!absl::StartsWith(arg, "--")) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument '", arg, "' (flags look like --name VALUE)"));
    }
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
    }
    if (name == "config") {
      config_file = value;
      continue;
    }
    const Knob* k = FindKnob(name);
    if (k == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " (semshare-server --help lists them)"));
    }
    flags.emplace_back(k, value);
  }
  ServerConfig c;
  if (!config_file.empty()) {
    if (auto s = ApplyFile(config_file, &c); !s.ok()) return s;
  }
  for (const Knob& k : Knobs()) {
    auto it = env.find(EnvName(k.name));
    if (it == env.end()) continue;
    if (auto s = SetKnob(k, it->second, "environment " + it->first, &c); !s.ok()) return s;
  }
  for (const auto& [k, value] : flags) {
    if (auto s = SetKnob(*k, value, "flag", &c); !s.ok()) return s;
  }
  if (c.model.empty())
    c.model = engine::InstalledDefaultModelPath();  // scripts/setup puts it there
  if (auto s = ValidateServerConfig(c); !s.ok()) return s;
  return c;
}

bool IsLoopbackAddress(const std::string& address) {
  const size_t colon = address.rfind(':');
  const std::string host = colon == std::string::npos ? address : address.substr(0, colon);
  return host == "127.0.0.1" || host == "localhost" || host == "[::1]" || host == "::1" ||
         absl::StartsWith(host, "127.");
}

absl::Status ValidateServerConfig(const ServerConfig& c) {
  auto check_addr = [](const char* name, const std::string& a) -> absl::Status {
    const size_t colon = a.rfind(':');
    int port = 0;
    if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(a.substr(colon + 1), &port) ||
        port < 0 || port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, " must be HOST:PORT (e.g. 0.0.0.0:50051), got '", a, "'"));
    }
    return absl::OkStatus();
  };
  if (auto s = check_addr("listen", c.listen); !s.ok()) return s;
  if (!c.metrics_listen.empty()) {
    if (auto s = check_addr("metrics-listen", c.metrics_listen); !s.ok()) return s;
  }
  if (!c.http_listen.empty()) {
    if (auto s = check_addr("http-listen", c.http_listen); !s.ok()) return s;
  }
  if (c.backend != "cpu" && c.backend != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("backend must be cpu or cuda, got '", c.backend, "'"));
  }
  if (c.log_level != "debug" && c.log_level != "info" && c.log_level != "warning" &&
      c.log_level != "error") {
    return absl::InvalidArgumentError(
        absl::StrCat("log-level must be debug, info, warning or error, got '", c.log_level, "'"));
  }
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return absl::InvalidArgumentError("tls-cert and tls-key must be given together");
  }
  if (!c.tls_client_ca.empty() && c.tls_cert.empty()) {
    return absl::InvalidArgumentError("tls-client-ca (mutual TLS) needs tls-cert and tls-key");
  }
  if (c.default_max_tokens > c.max_new_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("default-max-tokens (", c.default_max_tokens,
                                                   ") must not exceed max-new-tokens (",
                                                   c.max_new_tokens, ")"));
  }
  return absl::OkStatus();
}

}  // namespace semshare::server
