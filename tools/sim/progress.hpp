// A progress bar on stderr for cowpte-sim: what the simulation has done (rounds of a built-in
// workload, bytes of a trace), the elapsed time and an ETA, redrawn at most five times a second
// by a thread of its own, so that a long round still shows the time going. Shown on a terminal
// only once the run has taken a second (short runs stay quiet); off with --progress never.
// With --progress always and no terminal it prints a plain line every 10% instead.
#pragma once

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>

namespace cowpte::sim {

enum class ProgressMode { auto_, always, never };

class Progress {
 public:
  Progress(ProgressMode mode, std::string what)
      : what_(std::move(what)),
        tty_(::isatty(STDERR_FILENO) == 1),
        on_(mode == ProgressMode::always || (mode == ProgressMode::auto_ && tty_)) {
    if (on_) thread_ = std::thread([this] { loop(); });
  }
  ~Progress() { finish(); }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // done of total units (0 <= done <= total), and what is running now.
  void update(std::uint64_t done, std::uint64_t total, const std::string& now = {}) {
    std::lock_guard lk(mu_);
    done_ = done, total_ = total;
    if (!now.empty()) now_ = now;
  }
  // Clears the bar; afterwards stderr is the caller's again.
  void finish() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
    if (tty_ && drawn_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  using clock = std::chrono::steady_clock;

  void loop() {
    std::unique_lock lk(mu_);
    int tenth = -1;
    while (!cv_.wait_for(lk, std::chrono::milliseconds(200), [this] { return stop_; })) {
      const double t = std::chrono::duration<double>(clock::now() - start_).count();
      if (t < 1.0) continue;
      const double f = total_ ? double(done_) / double(total_) : 0.0;
      if (tty_) {
        draw(t, f);
      } else if (int(f * 10) > tenth) {
        tenth = int(f * 10);
        std::fprintf(stderr, "%s: %3.0f%% after %.1f s %s\n", what_.c_str(), f * 100, t,
                     now_.c_str());
      }
    }
  }
  void draw(double t, double f) {
    constexpr int kWidth = 30;
    const int full = int(f * kWidth);
    std::string bar(std::size_t(full), '#');
    bar.resize(kWidth, '.');
    char eta[32] = "";
    if (f > 0.01) std::snprintf(eta, sizeof eta, ", ETA %.0f s", t / f - t);
    std::fprintf(stderr, "\r\033[K%s [%s] %3.0f%%  %.0f s%s  %s", what_.c_str(), bar.c_str(),
                 f * 100, t, eta, now_.c_str());
    std::fflush(stderr);
    drawn_ = true;
  }

  std::string what_, now_;
  const bool tty_, on_;
  std::uint64_t done_ = 0, total_ = 0;
  bool stop_ = false, drawn_ = false;
  clock::time_point start_ = clock::now();
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

}  // namespace cowpte::sim
