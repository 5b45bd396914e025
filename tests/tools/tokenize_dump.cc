// Test helper for tests/oracle/tokenizer_oracle_test.py: runs our tokenizer, pre-tokenizer and
// chat templates over inputs given as JSON and writes what they produce as JSON.
//
//   tokenize_dump [--model M.gguf | --model tokenizer.json [--config tokenizer_config.json]]
//                 [--input strings.json] [--pre RULE] [--chat conversations.json]
//                 --output out.json
//
// strings.json: ["text", ...]. Output keys:
//   "ids"       [[int]]  Encode(text, parse_special=true), per string   (needs --model)
//   "ids_plain" [[int]]  Encode(text, parse_special=false)
//   "decoded"   [str]    Decode(ids)
//   "pieces"    [[str]]  PreTokenizer RULE's pieces                      (needs --pre)
//   "chat"      [str | {"error": str}]  Render of each conversation      (needs --chat)
// conversations.json: [{"messages": [{"role": r, "content": c}, ...],
//                       "add_generation_prompt": bool}, ...]
// Exit status 1 with a message on stderr for any error.
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/gguf.h"
#include "engine/text/bpe_pretokenizer.h"
#include "engine/text/chat_template.h"
#include "engine/text/tokenizer.h"
#include "nlohmann/json.hpp"

namespace {

using nlohmann::json;
using semshare::engine::ChatMessage;
using semshare::engine::ChatTemplate;
using semshare::engine::GgufFile;
using semshare::engine::PreTokenizer;
using semshare::engine::Tokenizer;

int Fail(const std::string& message) {
  std::cerr << "tokenize_dump: " << message << "\n";
  return 1;
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream buffer;
  buffer << in.rdbuf();
  *out = buffer.str();
  return true;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model,
                                                         const std::string& config) {
  if (model.ends_with(".gguf")) {
    auto gguf = GgufFile::Open(model);
    if (!gguf.ok()) return gguf.status();
    return Tokenizer::FromGguf(**gguf);
  }
  std::string json_text, config_text;
  if (!ReadFile(model, &json_text)) return absl::NotFoundError("cannot read " + model);
  if (!config.empty() && !ReadFile(config, &config_text)) {
    return absl::NotFoundError("cannot read " + config);
  }
  return Tokenizer::FromHfJson(json_text, config_text);
}

int Run(int argc, char** argv) {
  std::string model, config, input, pre, chat, output;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) return Fail("missing value for " + arg);
    const std::string value = argv[++i];
    if (arg == "--model") {
      model = value;
    } else if (arg == "--config") {
      config = value;
    } else if (arg == "--input") {
      input = value;
    } else if (arg == "--pre") {
      pre = value;
    } else if (arg == "--chat") {
      chat = value;
    } else if (arg == "--output") {
      output = value;
    } else {
      return Fail("unknown flag " + arg);
    }
  }
  if (output.empty()) return Fail("--output is required");

  std::vector<std::string> strings;
  if (!input.empty()) {
    std::string text;
    if (!ReadFile(input, &text)) return Fail("cannot read " + input);
    const json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_array()) return Fail(input + ": not a JSON array");
    for (const json& s : j) {
      if (!s.is_string()) return Fail(input + ": not all strings");
      strings.push_back(s.get<std::string>());
    }
  }

  json out = json::object();
  std::unique_ptr<Tokenizer> tokenizer;
  if (!model.empty()) {
    auto loaded = LoadTokenizer(model, config);
    if (!loaded.ok()) return Fail(loaded.status().ToString());
    tokenizer = *std::move(loaded);
    json ids = json::array(), ids_plain = json::array(), decoded = json::array();
    for (const std::string& s : strings) {
      const std::vector<int32_t> with_special = tokenizer->Encode(s, /*parse_special=*/true);
      ids.push_back(with_special);
      ids_plain.push_back(tokenizer->Encode(s, /*parse_special=*/false));
      decoded.push_back(tokenizer->Decode(with_special));
    }
    out["ids"] = std::move(ids);
    out["ids_plain"] = std::move(ids_plain);
    out["decoded"] = std::move(decoded);
    out["pre_tokenizer"] = tokenizer->pre_tokenizer();
  }
  if (!pre.empty()) {
    auto pre_tokenizer = PreTokenizer::Create(pre);
    if (!pre_tokenizer.ok()) return Fail(pre_tokenizer.status().ToString());
    json pieces = json::array();
    std::vector<std::string_view> split;
    for (const std::string& s : strings) {
      split.clear();
      (*pre_tokenizer)->Split(s, &split);
      json list = json::array();
      for (std::string_view piece : split) list.push_back(std::string(piece));
      pieces.push_back(std::move(list));
    }
    out["pieces"] = std::move(pieces);
  }
  if (!chat.empty()) {
    if (tokenizer == nullptr) return Fail("--chat needs --model");
    auto chat_template = ChatTemplate::FromTokenizer(*tokenizer);
    if (!chat_template.ok()) return Fail(chat_template.status().ToString());
    std::string text;
    if (!ReadFile(chat, &text)) return Fail("cannot read " + chat);
    const json conversations = json::parse(text, nullptr, false);
    if (conversations.is_discarded() || !conversations.is_array()) {
      return Fail(chat + ": not a JSON array");
    }
    json rendered = json::array();
    for (const json& c : conversations) {
      std::vector<ChatMessage> messages;
      for (const json& m : c.at("messages")) {
        messages.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
      }
      auto r = chat_template->Render(messages, c.value("add_generation_prompt", false));
      if (r.ok()) {
        rendered.push_back(*r);
      } else {
        rendered.push_back({{"error", r.status().ToString()}});
      }
    }
    out["chat"] = std::move(rendered);
  }
  std::ofstream file(output, std::ios::binary);
  // Ill-formed UTF-8 (a decode that went wrong) shows as U+FFFD instead of aborting the dump.
  file << out.dump(-1, ' ', false, json::error_handler_t::replace);
  if (!file) return Fail("cannot write " + output);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const nlohmann::json::exception& e) {
    return Fail(std::string("bad JSON input: ") + e.what());
  }
}
