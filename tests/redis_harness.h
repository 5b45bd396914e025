// Test helper: real redis-server processes (the Debian package scripts/setup installs) on free
// loopback ports in temporary directories, started in the foreground (no daemonize) and killed
// by the test; a 3-master Redis Cluster built with `redis-cli --cluster create`. Used by
// tests/store_redis_test.cc and `semshare bench --suite store`.
//
// Each server runs with appendonly + appendfsync always, so a node killed with SIGKILL and
// restarted on the same port and directory comes back with its data (and, in cluster mode,
// its nodes.conf, so it rejoins the cluster).
#ifndef SEMSHARE_TESTS_REDIS_HARNESS_H_
#define SEMSHARE_TESTS_REDIS_HARNESS_H_

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

extern char** environ;

namespace semshare::testing {

// Path of an executable on $PATH, or empty.
inline std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string p = path != nullptr ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= p.size()) {
    const size_t end = std::min(p.find(':', start), p.size());
    const std::string cand = p.substr(start, end - start) + "/" + name;
    if (::access(cand.c_str(), X_OK) == 0) return cand;
    start = end + 1;
  }
  return "";
}

inline absl::Status RequireRedisBinaries() {
  for (const char* bin : {"redis-server", "redis-cli"}) {
    if (FindOnPath(bin).empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat(bin,
                       " not found: run scripts/setup (it installs the Debian packages "
                       "redis-server and redis-tools)"));
    }
  }
  return absl::OkStatus();
}

inline bool PortFree(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  ::close(fd);
  return ok;
}

// A free port p in [20000, 22700) with p + 10000 (the cluster bus port) free too: both below
// Linux's ephemeral range (32768 and up), so the outgoing connections and port-0 listeners of
// tests running beside this one cannot take them between this check and redis-server's bind.
inline int FreeRedisPort() {
  static std::mt19937 rng(static_cast<uint32_t>(::getpid()) * 7919u +
                          static_cast<uint32_t>(std::time(nullptr)));
  for (int i = 0; i < 1000; ++i) {
    const int p = 20000 + static_cast<int>(rng() % 2700);
    if (PortFree(p) && PortFree(p + 10000)) return p;
  }
  return 0;
}

// Runs a command line, returns its stdout (stderr merged); exit status in *rc.
inline std::string Shell(const std::string& cmd, int* rc = nullptr) {
  std::string out;
  FILE* f = ::popen((cmd + " 2>&1").c_str(), "r");
  if (f == nullptr) return out;
  char buf[4096];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  const int st = ::pclose(f);
  if (rc != nullptr) *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

class RedisServer {
 public:
  // Starts a server in a new temp dir; cluster-enabled when `cluster`.
  static absl::StatusOr<std::unique_ptr<RedisServer>> Start(bool cluster) {
    if (absl::Status s = RequireRedisBinaries(); !s.ok()) return s;
    std::unique_ptr<RedisServer> r(new RedisServer);
    char tmpl[] = "/tmp/semshare-redis-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp failed");
    r->dir_ = tmpl;
    // Another process (a parallel test) may still bind the port first: a server that exits at
    // start gets a new port, a few times.
    absl::Status launched;
    for (int attempt = 0; attempt < 5; ++attempt) {
      r->port_ = FreeRedisPort();
      if (r->port_ == 0) return absl::UnavailableError("no free loopback port");
      std::ofstream conf(r->dir_ + "/redis.conf");
      conf << "port " << r->port_ << "\nbind 127.0.0.1\ndir " << r->dir_
           << "\ndaemonize no\nprotected-mode no\nsave \"\"\nappendonly yes\n"
           << "appendfsync always\nlogfile " << r->dir_ << "/redis.log\n";
      if (cluster) {
        conf << "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout 2000\n"
             << "cluster-require-full-coverage no\n";
      }
      conf.close();
      launched = r->Launch();
      if (launched.ok() || launched.code() != absl::StatusCode::kInternal) break;
    }
    if (!launched.ok()) return launched;
    return r;
  }

  ~RedisServer() {
    Kill();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  // SIGKILL (no shutdown, no save) and reap.
  void Kill() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  // Starts the server again on the same port and directory (after Kill).
  absl::Status Restart() {
    Kill();
    return Launch();
  }

  int port() const { return port_; }
  std::string addr() const { return absl::StrCat("127.0.0.1:", port_); }
  const std::string& dir() const { return dir_; }
  bool running() const { return pid_ > 0; }

  // Runs one command on this server over a fresh connection; the reply as text (arrays joined
  // by newlines), or an error Status.
  absl::StatusOr<std::string> Command(const std::vector<std::string>& args,
                                      int timeout_ms = 5000) const {
    redisContext* c = redisConnectWithTimeout("127.0.0.1", port_,
                                              {timeout_ms / 1000, (timeout_ms % 1000) * 1000});
    if (c == nullptr || c->err) {
      std::string e = c ? c->errstr : "oom";
      if (c) redisFree(c);
      return absl::UnavailableError(e);
    }
    redisSetTimeout(c, {timeout_ms / 1000, (timeout_ms % 1000) * 1000});
    std::vector<const char*> argv;
    std::vector<size_t> argl;
    for (const std::string& a : args) {
      argv.push_back(a.data());
      argl.push_back(a.size());
    }
    auto* r = static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(args.size()), argv.data(), argl.data()));
    absl::StatusOr<std::string> out;
    if (r == nullptr) {
      out = absl::UnavailableError(c->errstr);
    } else if (r->type == REDIS_REPLY_ERROR) {
      out = absl::InternalError(std::string(r->str, r->len));
    } else if (r->type == REDIS_REPLY_INTEGER) {
      out = absl::StrCat(r->integer);
    } else if (r->type == REDIS_REPLY_ARRAY) {
      std::vector<std::string> parts;
      for (size_t i = 0; i < r->elements; ++i) {
        const redisReply* e = r->element[i];
        parts.push_back(e->type == REDIS_REPLY_INTEGER ? absl::StrCat(e->integer)
                                                       : std::string(e->str ? e->str : "", e->len));
      }
      out = absl::StrJoin(parts, "\n");
    } else if (r->type == REDIS_REPLY_NIL) {
      out = std::string();
    } else {
      out = std::string(r->str, r->len);
    }
    if (r != nullptr) freeReplyObject(r);
    redisFree(c);
    return out;
  }

 private:
  RedisServer() = default;

  absl::Status Launch() {
    const std::string bin = FindOnPath("redis-server");
    const std::string conf = dir_ + "/redis.conf";
    const std::string out = dir_ + "/stdout.log";
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    char* argv[] = {const_cast<char*>(bin.c_str()), const_cast<char*>(conf.c_str()), nullptr};
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, bin.c_str(), &fa, nullptr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return absl::InternalError(absl::StrCat("posix_spawn redis-server: ", rc));
    pid_ = pid;
    // Ready when it answers PING (not LOADING).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
    while (std::chrono::steady_clock::now() < deadline) {
      absl::StatusOr<std::string> pong = Command({"PING"}, 500);
      if (pong.ok() && *pong == "PONG") return absl::OkStatus();
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return absl::InternalError(absl::StrCat("redis-server exited; see ", dir_, "/redis.log"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return absl::DeadlineExceededError(
        absl::StrCat("redis-server on port ", port_, " did not answer PING within 15 s"));
  }

  int port_ = 0;
  std::string dir_;
  pid_t pid_ = -1;
};

// Polls until every node reports cluster_state:ok and knows `n` nodes, or the timeout.
inline absl::Status WaitClusterOk(const std::vector<RedisServer*>& nodes, int timeout_ms = 20000) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string last;
  while (std::chrono::steady_clock::now() < deadline) {
    bool ok = true;
    for (RedisServer* s : nodes) {
      absl::StatusOr<std::string> info = s->Command({"CLUSTER", "INFO"}, 500);
      if (!info.ok() || !absl::StrContains(*info, "cluster_state:ok") ||
          !absl::StrContains(*info, absl::StrCat("cluster_known_nodes:", nodes.size()))) {
        ok = false;
        last = info.ok() ? *info : std::string(info.status().message());
        break;
      }
    }
    if (ok) return absl::OkStatus();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return absl::DeadlineExceededError(absl::StrCat("cluster not ok: ", last));
}

// Three cluster-enabled servers joined into a 3-master cluster (no replicas).
struct RedisCluster {
  std::vector<std::unique_ptr<RedisServer>> nodes;

  static absl::StatusOr<RedisCluster> Start(int n = 3) {
    RedisCluster c;
    std::vector<std::string> addrs;
    for (int i = 0; i < n; ++i) {
      absl::StatusOr<std::unique_ptr<RedisServer>> s = RedisServer::Start(true);
      if (!s.ok()) return s.status();
      addrs.push_back((*s)->addr());
      c.nodes.push_back(*std::move(s));
    }
    int rc = 0;
    const std::string out =
        Shell(absl::StrCat(FindOnPath("redis-cli"), " --cluster create ", absl::StrJoin(addrs, " "),
                           " --cluster-replicas 0 --cluster-yes"),
              &rc);
    if (rc != 0) return absl::InternalError(absl::StrCat("redis-cli --cluster create: ", out));
    if (absl::Status s = WaitClusterOk(c.raw()); !s.ok()) return s;
    return c;
  }
  std::vector<RedisServer*> raw() const {
    std::vector<RedisServer*> r;
    for (const auto& n : nodes) r.push_back(n.get());
    return r;
  }
  std::string seeds() const {
    std::vector<std::string> a;
    for (const auto& n : nodes) a.push_back(n->addr());
    return absl::StrJoin(a, ",");
  }
  // The node that holds `key` (answers EXISTS with 1 rather than 0 or a redirection).
  RedisServer* Holding(const std::string& key) const {
    for (const auto& n : nodes) {
      absl::StatusOr<std::string> e = n->Command({"EXISTS", key});
      if (e.ok() && *e == "1") return n.get();
    }
    return nullptr;
  }
};

}  // namespace semshare::testing

#endif  // SEMSHARE_TESTS_REDIS_HARNESS_H_
