#include "cache_store/redis_client.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace semshare::store {
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

timeval Tv(int32_t ms) { return timeval{ms / 1000, (ms % 1000) * 1000}; }

uint16_t Crc16(absl::string_view s) {  // CRC16-XMODEM: poly 0x1021, init 0, no reflection
  uint16_t crc = 0;
  for (unsigned char ch : s) {
    crc ^= static_cast<uint16_t>(ch) << 8;
    for (int i = 0; i < 8; ++i) {
      crc = (crc & 0x8000) ? static_cast<uint16_t>((crc << 1) ^ 0x1021)
                           : static_cast<uint16_t>(crc << 1);
    }
  }
  return crc;
}

// "host:port" -> (host, port).
absl::StatusOr<std::pair<std::string, int>> ParseHostPort(absl::string_view s) {
  const size_t colon = s.rfind(':');
  int port = 0;
  if (colon == absl::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(s.substr(colon + 1), &port) || port < 1 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("redis endpoint '", s, "' is not host:port with a port in [1, 65535]"));
  }
  return std::make_pair(std::string(s.substr(0, colon)), port);
}

RedisReply Convert(const redisReply* r, int64_t* bytes) {
  RedisReply out;
  switch (r->type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::kString;
      out.str.assign(r->str, r->len);
      *bytes += static_cast<int64_t>(r->len);
      break;
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:  // only inside arrays; top-level errors never get here
      out.type = RedisReply::Type::kStatus;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::kInteger;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::kArray;
      out.elements.reserve(r->elements);
      for (size_t i = 0; i < r->elements; ++i)
        out.elements.push_back(Convert(r->element[i], bytes));
      break;
    default:
      out.type = RedisReply::Type::kNil;
  }
  return out;
}

}  // namespace

int RedisKeySlot(absl::string_view key) {
  const size_t open = key.find('{');
  if (open != absl::string_view::npos) {
    const size_t close = key.find('}', open + 1);
    if (close != absl::string_view::npos && close > open + 1) {
      key = key.substr(open + 1, close - open - 1);
    }
  }
  return Crc16(key) & (kRedisSlots - 1);
}

absl::StatusOr<std::unique_ptr<RedisClient>> RedisClient::Create(
    const RedisClientOptions& options) {
  if (options.connect_timeout_ms < 1 || options.command_timeout_ms < 1 ||
      options.retry_backoff_ms < 0 || options.max_idle_per_node < 0 || options.max_redirects < 1 ||
      options.slot_refresh_interval_ms < 0) {
    return absl::InvalidArgumentError(
        "redis timeouts and max_redirects must be >= 1; backoff, pool size and refresh interval "
        ">= 0");
  }
  std::unique_ptr<RedisClient> c(new RedisClient(options));
  absl::string_view url = absl::StripAsciiWhitespace(options.url);
  if (url.empty()) return absl::InvalidArgumentError("empty redis URL");
  if (absl::ConsumePrefix(&url, "redis-cluster://")) c->cluster_ = true;
  if (absl::StrContains(url, ',')) c->cluster_ = true;
  for (absl::string_view part : absl::StrSplit(url, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    absl::ConsumePrefix(&part, "redis://");
    if (const size_t slash = part.find('/'); slash != absl::string_view::npos) {
      if (c->cluster_ || !absl::SimpleAtoi(part.substr(slash + 1), &c->db_) || c->db_ < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "redis URL '", options.url,
            "': a /db suffix is a non-negative integer, and Redis Cluster has only db 0"));
      }
      part = part.substr(0, slash);
    }
    absl::StatusOr<std::pair<std::string, int>> hp = ParseHostPort(part);
    if (!hp.ok()) return hp.status();
    c->seeds_.push_back(absl::StrCat(hp->first, ":", hp->second));
  }
  if (c->seeds_.empty()) return absl::InvalidArgumentError("redis URL names no node");
  return c;
}

RedisClient::~RedisClient() {
  for (auto& [addr, node] : nodes_) {
    for (redisContext* c : node->idle) redisFree(c);
  }
}

RedisClient::Node* RedisClient::GetNode(const std::string& addr) {
  std::lock_guard<std::mutex> lock(nodes_mu_);
  std::unique_ptr<Node>& n = nodes_[addr];
  if (n == nullptr) {
    n = std::make_unique<Node>();
    auto hp = ParseHostPort(addr);  // addresses come from seeds or the server: well formed
    if (hp.ok()) {
      n->host = hp->first;
      n->port = hp->second;
    }
  }
  return n.get();
}

absl::StatusOr<redisContext*> RedisClient::Acquire(Node* node) {
  {
    std::lock_guard<std::mutex> lock(node->mu);
    if (!node->idle.empty()) {
      redisContext* c = node->idle.back();
      node->idle.pop_back();
      return c;
    }
    if (NowMs() < node->down_until_ms) {
      return absl::UnavailableError(
          absl::StrCat("redis ", node->host, ":", node->port, " is down (retrying shortly)"));
    }
  }
  redisContext* c =
      redisConnectWithTimeout(node->host.c_str(), node->port, Tv(options_.connect_timeout_ms));
  std::string err;
  if (c == nullptr || c->err != 0) {
    err = c == nullptr ? "out of memory" : c->errstr;
  } else if (redisSetTimeout(c, Tv(options_.command_timeout_ms)) != REDIS_OK) {
    err = "cannot set the socket timeout";
  } else if (!cluster_ && db_ != 0) {
    auto* r = static_cast<redisReply*>(redisCommand(c, "SELECT %d", db_));
    if (r == nullptr || r->type == REDIS_REPLY_ERROR) {
      err = absl::StrCat("SELECT ", db_, ": ", r == nullptr ? c->errstr : r->str);
    }
    if (r != nullptr) freeReplyObject(r);
  }
  if (!err.empty()) {
    if (c != nullptr) redisFree(c);
    connect_failures_.fetch_add(1);
    std::lock_guard<std::mutex> lock(node->mu);
    node->down_until_ms = NowMs() + options_.retry_backoff_ms;
    return absl::UnavailableError(
        absl::StrCat("redis ", node->host, ":", node->port, ": connect: ", err));
  }
  connects_.fetch_add(1);
  return c;
}

void RedisClient::Release(Node* node, redisContext* c, bool healthy) {
  std::vector<redisContext*> drop;
  {
    std::lock_guard<std::mutex> lock(node->mu);
    if (healthy && static_cast<int32_t>(node->idle.size()) < options_.max_idle_per_node) {
      node->idle.push_back(c);
      return;
    }
    drop.push_back(c);
    if (!healthy) {  // a dead server leaves its idle connections dead too
      drop.insert(drop.end(), node->idle.begin(), node->idle.end());
      node->idle.clear();
    }
  }
  for (redisContext* d : drop) redisFree(d);
}

absl::Status RedisClient::Fail(absl::Status s) {
  errors_.fetch_add(1);
  if (absl::IsDeadlineExceeded(s)) timeouts_.fetch_add(1);
  return s;
}

void RedisClient::Exchange(std::span<const RedisCommand> commands, std::vector<Pending>& pending,
                           std::vector<absl::StatusOr<RedisReply>>& results,
                           std::vector<Pending>& redirected) {
  // Group by node, keeping the batch order within a node.
  std::vector<std::string> order;
  absl::flat_hash_map<std::string, std::vector<const Pending*>> groups;
  for (const Pending& p : pending) {
    auto [it, inserted] = groups.try_emplace(p.node);
    if (inserted) order.push_back(p.node);
    it->second.push_back(&p);
  }
  struct Conn {
    Node* node = nullptr;
    redisContext* c = nullptr;
    absl::Status status;
  };
  const auto io_error = [](redisContext* c, const Node* n) {
    const bool timeout = errno == EAGAIN || errno == EWOULDBLOCK ||
                         absl::StrContains(c->errstr, "temporarily unavailable");
    const std::string msg =
        absl::StrCat("redis ", n->host, ":", n->port, ": ",
                     timeout ? "timed out" : "connection lost", " (", c->errstr, ")");
    return timeout ? absl::DeadlineExceededError(msg) : absl::UnavailableError(msg);
  };
  std::vector<Conn> conns(order.size());
  // Phase 1: write every node's commands, so the nodes work in parallel.
  for (size_t g = 0; g < order.size(); ++g) {
    Conn& cn = conns[g];
    cn.node = GetNode(order[g]);
    absl::StatusOr<redisContext*> c = Acquire(cn.node);
    if (!c.ok()) {
      cn.status = c.status();
      continue;
    }
    cn.c = *c;
    for (const Pending* p : groups[order[g]]) {
      const RedisCommand& cmd = commands[p->index];
      if (p->asking) redisAppendCommand(cn.c, "ASKING");
      std::vector<const char*> argv;
      std::vector<size_t> argl;
      int64_t bytes = 0;
      for (const std::string& a : cmd.args) {
        argv.push_back(a.data());
        argl.push_back(a.size());
        bytes += static_cast<int64_t>(a.size());
      }
      redisAppendCommandArgv(cn.c, static_cast<int>(argv.size()), argv.data(), argl.data());
      commands_.fetch_add(1);
      bytes_sent_.fetch_add(bytes);
    }
    int done = 0;
    while (!done) {
      if (redisBufferWrite(cn.c, &done) == REDIS_ERR) {
        cn.status = io_error(cn.c, cn.node);
        break;
      }
    }
  }
  // Phase 2: read the replies.
  for (size_t g = 0; g < order.size(); ++g) {
    Conn& cn = conns[g];
    for (const Pending* p : groups[order[g]]) {
      absl::StatusOr<RedisReply>& out = results[p->index];
      if (!cn.status.ok()) {
        out = cn.status;
        continue;
      }
      void* raw = nullptr;
      if (p->asking) {
        if (redisGetReply(cn.c, &raw) != REDIS_OK) {
          cn.status = io_error(cn.c, cn.node);
          out = cn.status;
          continue;
        }
        freeReplyObject(raw);
        raw = nullptr;
      }
      if (redisGetReply(cn.c, &raw) != REDIS_OK || raw == nullptr) {
        cn.status = io_error(cn.c, cn.node);
        out = cn.status;
        continue;
      }
      const auto* r = static_cast<const redisReply*>(raw);
      if (r->type == REDIS_REPLY_ERROR) {
        const absl::string_view err(r->str, r->len);
        const std::vector<absl::string_view> parts = absl::StrSplit(err, ' ');
        const bool moved = absl::StartsWith(err, "MOVED "), ask = absl::StartsWith(err, "ASK ");
        int slot = -1;
        if ((moved || ask) && parts.size() == 3 && absl::SimpleAtoi(parts[1], &slot) &&
            ParseHostPort(parts[2]).ok()) {
          std::string target(parts[2]);
          if (moved) {
            moved_.fetch_add(1);
            SetSlotOwner(slot, target);
          } else {
            ask_.fetch_add(1);
          }
          redirected.push_back(Pending{p->index, std::move(target), ask});
          out = absl::InternalError(absl::StrCat("redirected: ", err));  // until retried
        } else {
          out = absl::InternalError(absl::StrCat("redis ", order[g], ": ", err));
        }
      } else {
        int64_t bytes = 0;
        out = Convert(r, &bytes);
        bytes_received_.fetch_add(bytes);
      }
      freeReplyObject(raw);
    }
    if (cn.c != nullptr) Release(cn.node, cn.c, cn.status.ok());
  }
}

std::vector<absl::StatusOr<RedisReply>> RedisClient::Run(std::span<const RedisCommand> commands) {
  std::vector<absl::StatusOr<RedisReply>> results(commands.size(),
                                                  absl::UnavailableError("not run"));
  std::vector<Pending> pending;
  pending.reserve(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) {
    const RedisCommand& cmd = commands[i];
    if (cmd.key_index < 0 || cmd.key_index >= static_cast<int>(cmd.args.size())) {
      results[i] = absl::InvalidArgumentError("redis command has no routing key");
      continue;
    }
    absl::StatusOr<std::string> node = NodeForKey(cmd.args[cmd.key_index]);
    if (!node.ok()) {
      results[i] = node.status();
      continue;
    }
    pending.push_back(Pending{i, *std::move(node), false});
  }
  std::vector<Pending> redirected;
  for (int round = 0; round <= options_.max_redirects && !pending.empty(); ++round) {
    redirected.clear();
    Exchange(commands, pending, results, redirected);
    if (round == options_.max_redirects) break;  // the last round's redirects stay errors
    pending.swap(redirected);
    if (cluster_ && !pending.empty()) (void)RefreshSlots(false);
  }
  bool unavailable = false;
  for (absl::StatusOr<RedisReply>& r : results) {
    if (!r.ok()) {
      r = Fail(r.status());
      unavailable |= absl::IsUnavailable(r.status());
    }
  }
  // A lost node may have failed over (or its slots moved): look again, rate-limited.
  if (cluster_ && unavailable) (void)RefreshSlots(false);
  return results;
}

absl::StatusOr<RedisReply> RedisClient::Run(const RedisCommand& command) {
  return std::move(Run(std::span<const RedisCommand>(&command, 1))[0]);
}

std::vector<absl::StatusOr<RedisReply>> RedisClient::RunOnNode(
    const std::string& node, std::span<const RedisCommand> commands) {
  std::vector<absl::StatusOr<RedisReply>> results(commands.size(),
                                                  absl::UnavailableError("not run"));
  std::vector<Pending> pending, redirected;
  for (size_t i = 0; i < commands.size(); ++i) pending.push_back(Pending{i, node, false});
  Exchange(commands, pending, results, redirected);
  for (absl::StatusOr<RedisReply>& r : results) {
    if (!r.ok()) r = Fail(r.status());
  }
  return results;
}

std::shared_ptr<const RedisClient::SlotMap> RedisClient::slots() const {
  std::lock_guard<std::mutex> lock(slots_mu_);
  return slots_;
}

void RedisClient::SetSlotOwner(int slot, const std::string& node) {
  if (slot < 0 || slot >= kRedisSlots) return;
  std::lock_guard<std::mutex> lock(slots_mu_);
  auto m = slots_ != nullptr ? std::make_shared<SlotMap>(*slots_) : std::make_shared<SlotMap>();
  if (slots_ == nullptr) m->owner.fill(-1);
  int16_t idx = -1;
  for (size_t i = 0; i < m->nodes.size(); ++i) {
    if (m->nodes[i] == node) idx = static_cast<int16_t>(i);
  }
  if (idx < 0) {
    idx = static_cast<int16_t>(m->nodes.size());
    m->nodes.push_back(node);
  }
  m->owner[slot] = idx;
  slots_ = std::move(m);
}

absl::Status RedisClient::RefreshSlots(bool force) {
  std::lock_guard<std::mutex> refresh(refresh_mu_);
  std::vector<std::string> candidates;
  {
    std::lock_guard<std::mutex> lock(slots_mu_);
    const int64_t now = NowMs();
    if (!force && now - last_refresh_ms_ < options_.slot_refresh_interval_ms) {
      return slots_ != nullptr ? absl::OkStatus()
                               : absl::UnavailableError("no redis cluster node answered");
    }
    last_refresh_ms_ = now;
    if (slots_ != nullptr) candidates = slots_->nodes;
  }
  for (const std::string& s : seeds_) {
    if (std::find(candidates.begin(), candidates.end(), s) == candidates.end()) {
      candidates.push_back(s);
    }
  }
  absl::Status last = absl::UnavailableError("no redis cluster node answered");
  for (const std::string& addr : candidates) {
    const RedisCommand cmd{{"CLUSTER", "SLOTS"}, 0};
    absl::StatusOr<RedisReply> r = std::move(RunOnNode(addr, {&cmd, 1})[0]);
    if (!r.ok()) {
      last = r.status();
      continue;
    }
    auto m = std::make_shared<SlotMap>();
    m->owner.fill(-1);
    const std::string host_default = addr.substr(0, addr.rfind(':'));
    for (const RedisReply& e : r->elements) {
      if (e.elements.size() < 3 || e.elements[2].elements.size() < 2) continue;
      const int64_t lo = e.elements[0].integer, hi = e.elements[1].integer;
      const RedisReply& master = e.elements[2];
      std::string host = master.elements[0].str;
      if (host.empty() || host == "?") host = host_default;
      const std::string node = absl::StrCat(host, ":", master.elements[1].integer);
      int16_t idx = -1;
      for (size_t i = 0; i < m->nodes.size(); ++i) {
        if (m->nodes[i] == node) idx = static_cast<int16_t>(i);
      }
      if (idx < 0) {
        idx = static_cast<int16_t>(m->nodes.size());
        m->nodes.push_back(node);
      }
      for (int64_t s = std::max<int64_t>(lo, 0); s <= std::min<int64_t>(hi, kRedisSlots - 1); ++s)
        m->owner[s] = idx;
    }
    if (m->nodes.empty()) {
      last = absl::UnavailableError(absl::StrCat("redis ", addr, " serves no slots"));
      continue;
    }
    slot_refreshes_.fetch_add(1);
    std::lock_guard<std::mutex> lock(slots_mu_);
    slots_ = std::move(m);
    return absl::OkStatus();
  }
  return last;
}

absl::StatusOr<std::string> RedisClient::NodeForKey(absl::string_view key) {
  if (!cluster_) return seeds_[0];
  const int slot = RedisKeySlot(key);
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (std::shared_ptr<const SlotMap> m = slots(); m != nullptr && m->owner[slot] >= 0) {
      return m->nodes[m->owner[slot]];
    }
    if (attempt == 0) {
      if (absl::Status s = RefreshSlots(false); !s.ok()) return s;
    }
  }
  return absl::UnavailableError(absl::StrCat("no redis cluster node serves slot ", slot));
}

absl::StatusOr<std::vector<std::string>> RedisClient::Masters() {
  if (!cluster_) return seeds_;
  absl::Status s = RefreshSlots(false);
  std::shared_ptr<const SlotMap> m = slots();
  if (m == nullptr) return s.ok() ? absl::UnavailableError("no redis cluster map") : s;
  std::vector<bool> owns(m->nodes.size());
  for (int16_t o : m->owner) {
    if (o >= 0) owns[o] = true;
  }
  std::vector<std::string> out;
  for (size_t i = 0; i < m->nodes.size(); ++i) {
    if (owns[i]) out.push_back(m->nodes[i]);
  }
  return out;
}

RedisClientStats RedisClient::Stats() const {
  RedisClientStats s;
  s.commands = commands_.load();
  s.errors = errors_.load();
  s.timeouts = timeouts_.load();
  s.connects = connects_.load();
  s.connect_failures = connect_failures_.load();
  s.moved = moved_.load();
  s.ask = ask_.load();
  s.slot_refreshes = slot_refreshes_.load();
  s.bytes_sent = bytes_sent_.load();
  s.bytes_received = bytes_received_.load();
  return s;
}

}  // namespace semshare::store
