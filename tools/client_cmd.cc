// `semshare client <method>`: one call to a semshare-server. Generated text goes to stdout, a
// one-line summary (cache result, similarity, reused tokens, TTFT) to stderr, and the whole
// response as JSON to --json FILE. A failed call prints "CODE: message" and exits 1.
#include <cstdio>
#include <fstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/util/json_util.h"
#include "semshare/v1/semshare.grpc.pb.h"
#include "tools/commands.h"
#include "tools/grpc_client.h"

namespace semshare::tools {
namespace {

constexpr const char* kMethods =
    "generate | stream | tokenize | info | lookup | add-reference | stats | list | delete | "
    "clear";

std::vector<FlagSpec> Specs() {
  std::vector<FlagSpec> specs = ConnectionFlags();
  const std::vector<FlagSpec> more = {
      {"prompt", "prompt text (generate, stream, tokenize, lookup, add-reference)"},
      {"prompt-file", "read the prompt from this file instead"},
      {"chat", "send the prompt as one user message (the model's chat template applies)", true},
      {"system", "system message for --chat"},
      {"max-tokens", "new tokens at most (unset: the server's default)"},
      {"temperature", "0 = greedy", false, false, "0"},
      {"top-p", "nucleus mass in (0, 1] (0 = unset)", false, false, "0"},
      {"top-k", "0 = no limit", false, false, "0"},
      {"seed", "sampling seed", false, false, "0"},
      {"stop", "stop string (repeatable)", false, true},
      {"cache-policy", "auto | bypass | no-publish", false, false, "auto"},
      {"threshold", "similarity threshold override in (0, 1] (0 = the server's)", false, false,
       "0"},
      {"id", "reference id (delete)"},
      {"tenant", "tenant to list ('*' = all; list)"},
      {"json", "write the response as JSON to this file"},
      {"help", "show this help", true},
  };
  specs.insert(specs.end(), more.begin(), more.end());
  return specs;
}

int Usage(const std::string& msg) {
  std::fprintf(stderr, "semshare client: %s\n", msg.c_str());
  return 2;
}

int CallFailed(const grpc::Status& s) {
  std::fprintf(stderr, "semshare client: %s\n", DescribeStatus(s).c_str());
  return 1;
}

void WriteJson(const Args& args, const google::protobuf::Message& m) {
  std::string json;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(m, &json, o);
  if (args.Has("json")) {
    std::ofstream(args.Str("json")) << json;
  } else if (m.GetDescriptor()->name() != "GenerateResponse") {
    std::fputs(json.c_str(), stdout);
  }
}

// Sets the prompt / messages of any request with the `input` oneof.
template <typename Req>
absl::Status FillInput(const Args& args, Req* r) {
  std::string prompt = args.Str("prompt");
  if (args.Has("prompt-file")) {
    std::ifstream in(args.Str("prompt-file"), std::ios::binary);
    if (!in) return absl::NotFoundError("cannot read " + args.Str("prompt-file"));
    prompt.assign(std::istreambuf_iterator<char>(in), {});
  }
  if (!args.Has("prompt") && !args.Has("prompt-file")) {
    return absl::InvalidArgumentError("--prompt or --prompt-file is required");
  }
  if (args.Bool("chat")) {
    v1::Messages* m = r->mutable_messages();
    if (args.Has("system")) {
      v1::ChatMessage* s = m->add_messages();
      s->set_role("system");
      s->set_content(args.Str("system"));
    }
    v1::ChatMessage* u = m->add_messages();
    u->set_role("user");
    u->set_content(prompt);
  } else {
    r->set_prompt(prompt);
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::GenerateRequest> BuildGenerate(const Args& args) {
  v1::GenerateRequest r;
  if (auto s = FillInput(args, &r); !s.ok()) return s;
  absl::StatusOr<int64_t> max_tokens = args.Has("max-tokens") ? args.Int("max-tokens") : 0,
                          top_k = args.Int("top-k"), seed = args.Int("seed");
  absl::StatusOr<double> temperature = args.Double("temperature"), top_p = args.Double("top-p"),
                         threshold = args.Double("threshold");
  for (const absl::Status& s : {max_tokens.status(), top_k.status(), seed.status(),
                                temperature.status(), top_p.status(), threshold.status()}) {
    if (!s.ok()) return s;
  }
  v1::SamplingParams* sp = r.mutable_sampling();
  if (args.Has("max-tokens")) sp->set_max_tokens(static_cast<int32_t>(*max_tokens));
  sp->set_temperature(static_cast<float>(*temperature));
  sp->set_top_p(static_cast<float>(*top_p));
  sp->set_top_k(static_cast<int32_t>(*top_k));
  sp->set_seed(static_cast<uint64_t>(*seed));
  for (const std::string& stop : args.All("stop")) sp->add_stop(stop);
  const std::string policy = args.Str("cache-policy");
  if (policy == "auto") {
    r.set_cache_policy(v1::CACHE_POLICY_AUTO);
  } else if (policy == "bypass") {
    r.set_cache_policy(v1::CACHE_POLICY_BYPASS);
  } else if (policy == "no-publish") {
    r.set_cache_policy(v1::CACHE_POLICY_NO_PUBLISH);
  } else {
    return absl::InvalidArgumentError("--cache-policy must be auto, bypass or no-publish");
  }
  r.set_similarity_threshold(static_cast<float>(*threshold));
  return r;
}

void PrintSummary(const v1::Usage& u, const v1::CacheInfo& c, const v1::Timings& t,
                  v1::FinishReason finish) {
  std::fprintf(stderr,
               "\n[cache %s similarity %.3f reused %lld recomputed %lld | prompt %lld tokens, "
               "completion %lld (%s) | queue %.1f ms, ttft %.1f ms, total %.1f ms]\n",
               c.result().c_str(), c.similarity(), static_cast<long long>(u.reused_tokens()),
               static_cast<long long>(u.recomputed_tokens()),
               static_cast<long long>(u.prompt_tokens()),
               static_cast<long long>(u.completion_tokens()), v1::FinishReason_Name(finish).c_str(),
               t.queue_ms(), t.ttft_ms(), t.total_ms());
}

int Run(const std::string& method, const Args& args) {
  absl::StatusOr<Connection> conn = Connect(args);
  if (!conn.ok()) return Usage(std::string(conn.status().message()));
  auto stub = v1::SemShare::NewStub(conn->channel);
  auto admin = v1::CacheAdmin::NewStub(conn->channel);
  auto ctx = conn->NewContext();
  grpc::Status s;
  if (method == "generate" || method == "stream") {
    absl::StatusOr<v1::GenerateRequest> req = BuildGenerate(args);
    if (!req.ok()) return Usage(std::string(req.status().message()));
    if (method == "generate") {
      v1::GenerateResponse resp;
      s = stub->Generate(ctx.get(), *req, &resp);
      if (!s.ok()) return CallFailed(s);
      std::fputs(resp.text().c_str(), stdout);
      std::fflush(stdout);
      PrintSummary(resp.usage(), resp.cache(), resp.timings(), resp.finish_reason());
      WriteJson(args, resp);
      return 0;
    }
    auto reader = stub->GenerateStream(ctx.get(), *req);
    v1::GenerateStreamResponse msg, last;
    while (reader->Read(&msg)) {
      std::fputs(msg.text().c_str(), stdout);
      std::fflush(stdout);
      if (msg.done()) last = msg;
    }
    s = reader->Finish();
    if (!s.ok()) return CallFailed(s);
    PrintSummary(last.usage(), last.cache(), last.timings(), last.finish_reason());
    if (args.Has("json")) WriteJson(args, last);
    return 0;
  }
  if (method == "tokenize") {
    v1::TokenizeRequest req;
    if (auto st = FillInput(args, &req); !st.ok()) return Usage(std::string(st.message()));
    v1::TokenizeResponse resp;
    s = stub->Tokenize(ctx.get(), req, &resp);
    if (!s.ok()) return CallFailed(s);
    WriteJson(args, resp);
    return 0;
  }
  if (method == "lookup") {
    v1::LookupReferenceRequest req;
    if (auto st = FillInput(args, &req); !st.ok()) return Usage(std::string(st.message()));
    absl::StatusOr<double> t = args.Double("threshold");
    if (!t.ok()) return Usage(std::string(t.status().message()));
    req.set_similarity_threshold(static_cast<float>(*t));
    v1::LookupReferenceResponse resp;
    s = stub->LookupReference(ctx.get(), req, &resp);
    if (!s.ok()) return CallFailed(s);
    WriteJson(args, resp);
    return 0;
  }
  if (method == "add-reference") {
    v1::AddReferenceRequest req;
    if (auto st = FillInput(args, &req); !st.ok()) return Usage(std::string(st.message()));
    v1::AddReferenceResponse resp;
    s = stub->AddReference(ctx.get(), req, &resp);
    if (!s.ok()) return CallFailed(s);
    WriteJson(args, resp);
    return 0;
  }
  if (method == "info") {
    v1::GetModelInfoResponse resp;
    s = stub->GetModelInfo(ctx.get(), v1::GetModelInfoRequest(), &resp);
    if (!s.ok()) return CallFailed(s);
    WriteJson(args, resp);
    return 0;
  }
  if (method == "stats") {
    v1::GetStatsResponse resp;
    s = admin->GetStats(ctx.get(), v1::GetStatsRequest(), &resp);
    if (!s.ok()) return CallFailed(s);
    WriteJson(args, resp);
    return 0;
  }
  if (method == "list") {
    v1::ListReferencesRequest req;
    req.set_tenant(args.Str("tenant"));
    v1::ListReferencesResponse resp;
    s = admin->ListReferences(ctx.get(), req, &resp);
    if (!s.ok()) return CallFailed(s);
    WriteJson(args, resp);
    return 0;
  }
  if (method == "delete") {
    v1::DeleteReferenceRequest req;
    uint64_t id = 0;
    if (!absl::SimpleAtoi(args.Str("id"), &id)) return Usage("--id must be a reference id");
    req.set_id(id);
    v1::DeleteReferenceResponse resp;
    s = admin->DeleteReference(ctx.get(), req, &resp);
    if (!s.ok()) return CallFailed(s);
    return 0;
  }
  if (method == "clear") {
    v1::ClearResponse resp;
    s = admin->Clear(ctx.get(), v1::ClearRequest(), &resp);
    if (!s.ok()) return CallFailed(s);
    WriteJson(args, resp);
    return 0;
  }
  return Usage(absl::StrFormat("unknown method '%s' (one of: %s)", method, kMethods));
}

}  // namespace

int ClientCommand(int argc, char** argv) {
  const std::string usage = absl::StrFormat(
      "semshare client <%s> [--target HOST:PORT] [--api-key KEY] [--prompt TEXT] ...", kMethods);
  if (argc < 1 || std::string(argv[0]) == "--help") {
    std::fputs(Args::Help(usage, Specs()).c_str(), argc < 1 ? stderr : stdout);
    return argc < 1 ? 2 : 0;
  }
  const std::string method = argv[0];
  absl::StatusOr<Args> args = Args::Parse(Specs(), argc - 1, argv + 1);
  if (!args.ok()) return Usage(std::string(args.status().message()));
  if (args->Bool("help")) {
    std::fputs(Args::Help(usage, Specs()).c_str(), stdout);
    return 0;
  }
  return Run(method, *args);
}

}  // namespace semshare::tools
