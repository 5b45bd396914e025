// A small thread-safe Redis / Redis Cluster client on hiredis (synchronous API) for the Redis
// tier (DESIGN.md section 5). It knows exactly what the tier needs: pipelined batches of
// commands routed by key, cluster slot routing with MOVED / ASK redirections, per-node
// connection pools, timeouts, and fast failure while a node is down.
//
// Endpoints (RedisClientOptions::url):
//   redis://host:port[/db]            standalone server (db selected on connect)
//   host:port,host:port,...           Redis Cluster seed nodes (redis:// prefixes allowed)
//   redis-cluster://host:port[,...]   Redis Cluster, also with a single seed
//
// Cluster routing: a key's slot is CRC16-XMODEM(key or its {hash tag}) mod 16384 (the Redis
// Cluster spec); the slot -> master map comes from CLUSTER SLOTS, fetched lazily from any known
// node and refreshed after a MOVED reply or a failed node (rate-limited). A MOVED reply also
// updates that slot at once and the command is retried there; an ASK reply retries it once on
// the named node preceded by ASKING. At most max_redirects rounds per batch.
//
// Connections: each node has a pool of idle connections; a command takes one (or connects,
// with connect_timeout_ms) and gives it back when the exchange completed cleanly. A socket
// error or timeout (command_timeout_ms on every read and write) discards the connection and
// every idle one of that node (a dead server leaves them all dead). A failed connect marks the
// node down for retry_backoff_ms, during which its commands fail at once with Unavailable: a
// down Redis costs callers microseconds, not a connect timeout each. Reconnection is
// automatic once the backoff expires and the server answers again.
//
// Errors: per command, Unavailable (cannot connect, connection lost, no slot owner),
// DeadlineExceeded (timeout), Internal (an error reply such as WRONGTYPE, or redirections
// exhausted). Error replies are never returned as data.
#ifndef SEMSHARE_CACHE_STORE_REDIS_CLIENT_H_
#define SEMSHARE_CACHE_STORE_REDIS_CLIENT_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct redisContext;

namespace semshare::store {

inline constexpr int kRedisSlots = 16384;

// Hash slot of a key: CRC16 of the text between the first '{' and the next '}' when that is
// non-empty, else of the whole key.
int RedisKeySlot(absl::string_view key);

struct RedisClientOptions {
  std::string url;
  int32_t connect_timeout_ms = 200;
  int32_t command_timeout_ms = 500;
  int32_t retry_backoff_ms = 250;  // a node that refused a connection is not retried sooner
  int32_t max_idle_per_node = 8;
  int32_t max_redirects = 5;
  int32_t slot_refresh_interval_ms = 100;  // minimum time between CLUSTER SLOTS refreshes
};

// An owned copy of a hiredis reply (error replies become Statuses instead).
struct RedisReply {
  enum class Type { kNil, kString, kInteger, kArray, kStatus };
  Type type = Type::kNil;
  std::string str;  // kString, kStatus
  int64_t integer = 0;
  std::vector<RedisReply> elements;
  bool is_nil() const { return type == Type::kNil; }
};

// One command: its arguments and the index of the argument whose slot routes it (cluster).
struct RedisCommand {
  std::vector<std::string> args;
  int key_index = 1;
};

struct RedisClientStats {
  int64_t commands = 0;          // commands sent (retries included)
  int64_t errors = 0;            // commands that ended in a non-OK Status
  int64_t timeouts = 0;          // of which timeouts
  int64_t connects = 0;          // connections opened
  int64_t connect_failures = 0;  // connects refused or timed out
  int64_t moved = 0;             // MOVED redirections followed
  int64_t ask = 0;               // ASK redirections followed
  int64_t slot_refreshes = 0;    // CLUSTER SLOTS maps loaded
  int64_t bytes_sent = 0;        // argument bytes of the commands sent
  int64_t bytes_received = 0;    // string bytes of the replies
};

class RedisClient {
 public:
  // Parses the URL; connects lazily (Redis may be down when the store opens). InvalidArgument
  // for a malformed URL or option.
  static absl::StatusOr<std::unique_ptr<RedisClient>> Create(const RedisClientOptions& options);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // Runs the commands, pipelined per node (all nodes written before any reply is read); one
  // result per command, in order. Commands of one batch must not depend on each other's
  // effects unless they share a slot (their order is kept per node).
  std::vector<absl::StatusOr<RedisReply>> Run(std::span<const RedisCommand> commands);
  absl::StatusOr<RedisReply> Run(const RedisCommand& command);
  // Runs the commands on one node ("host:port"), without redirections (SCAN, DEBUG, ...).
  std::vector<absl::StatusOr<RedisReply>> RunOnNode(const std::string& node,
                                                    std::span<const RedisCommand> commands);
  // The masters ("host:port"): the single server, or the cluster's masters by the slot map
  // (refreshed first; Unavailable when no node answers).
  absl::StatusOr<std::vector<std::string>> Masters();
  // The node that owns `key` now ("host:port"), refreshing the cluster map if unknown.
  absl::StatusOr<std::string> NodeForKey(absl::string_view key);

  bool cluster() const { return cluster_; }
  RedisClientStats Stats() const;

 private:
  struct Node {
    std::string host;
    int port = 0;
    std::mutex mu;
    std::vector<redisContext*> idle;  // guarded by mu
    int64_t down_until_ms = 0;        // guarded by mu
  };
  struct SlotMap {
    std::vector<std::string> nodes;          // "host:port" of the masters
    std::array<int16_t, kRedisSlots> owner;  // index into nodes, -1 unknown
  };
  // One command in flight: its index in the caller's batch and whether it needs ASKING.
  struct Pending {
    size_t index = 0;
    std::string node;
    bool asking = false;
  };

  explicit RedisClient(const RedisClientOptions& options) : options_(options) {}
  Node* GetNode(const std::string& addr);
  absl::StatusOr<redisContext*> Acquire(Node* node);
  void Release(Node* node, redisContext* c, bool healthy);
  // Sends each group's commands and reads the replies; fills results and collects redirects.
  void Exchange(std::span<const RedisCommand> commands, std::vector<Pending>& pending,
                std::vector<absl::StatusOr<RedisReply>>& results, std::vector<Pending>& redirected);
  absl::Status RefreshSlots(bool force);
  std::shared_ptr<const SlotMap> slots() const;
  void SetSlotOwner(int slot, const std::string& node);
  absl::Status Fail(absl::Status s);

  const RedisClientOptions options_;
  bool cluster_ = false;
  int db_ = 0;
  std::vector<std::string> seeds_;

  mutable std::mutex nodes_mu_;
  absl::flat_hash_map<std::string, std::unique_ptr<Node>> nodes_;  // never erased

  mutable std::mutex slots_mu_;
  std::shared_ptr<const SlotMap> slots_;  // null until loaded (cluster only)
  int64_t last_refresh_ms_ = 0;           // guarded by slots_mu_
  std::mutex refresh_mu_;                 // one CLUSTER SLOTS exchange at a time

  std::atomic<int64_t> commands_{0}, errors_{0}, timeouts_{0}, connects_{0}, connect_failures_{0},
      moved_{0}, ask_{0}, slot_refreshes_{0}, bytes_sent_{0}, bytes_received_{0};
};

}  // namespace semshare::store

#endif  // SEMSHARE_CACHE_STORE_REDIS_CLIENT_H_
