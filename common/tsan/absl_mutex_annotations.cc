// TSan annotations for Debian's Abseil: libraptr_tsan_absl.so, built in the TSan build only
// (RAPTR_SANITIZE=thread) and preloaded by scripts/sanitize.sh tsan (LD_PRELOAD).
//
// Why this file exists: libabsl-dev is not built with TSan, so absl::Mutex's lock and unlock
// (atomics and futexes inside the uninstrumented library) are invisible to it, and every access
// guarded by an absl::Mutex looks like a data race. Abseil's own TSan annotations compile in only
// when Abseil itself is built with -fsanitize=thread, and Debian ships no such build. So this file
// interposes the library's public Mutex and CondVar entry points (a preloaded library's definition
// wins over libabsl's for every caller, gRPC's included), calls the real ones through
// dlsym(RTLD_NEXT), and tells TSan what they did: a happens-before edge from each release of a
// mutex to the next acquisition of it. Reader locks are treated as exclusive, which can only hide
// a race between two readers, never report a false one.
//
// The file itself is not instrumented, and it reaches TSan's interface through weak symbols, so
// the preload is harmless in the test's other processes (bash, python3, curl): there the two
// functions are absent and nothing is annotated.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

extern "C" void __tsan_acquire(void* addr) __attribute__((weak));
extern "C" void __tsan_release(void* addr) __attribute__((weak));

namespace {

template <typename F>
F Real(const char* name) {
  void* f = dlsym(RTLD_NEXT, name);
  if (f == nullptr) {
    std::fprintf(stderr, "absl_mutex_annotations: %s not found: %s\n", name, dlerror());
    std::abort();
  }
  return reinterpret_cast<F>(f);
}

void Acquired(void* mu) {
  if (__tsan_acquire != nullptr) __tsan_acquire(mu);
}
void Releasing(void* mu) {
  if (__tsan_release != nullptr) __tsan_release(mu);
}

// Abseil evaluates a waiter's condition while holding the mutex, but not always in the waiter's
// thread: an unlocking thread evaluates the conditions of those waiting, inside Unlock. Each
// condition handed to Abseil is therefore wrapped so that its evaluation is itself annotated as
// holding the mutex.
struct AnnotatedCondition {
  const absl::Condition* condition;
  absl::Mutex* mu;
};
bool EvalAnnotated(AnnotatedCondition* c) {
  Acquired(c->mu);
  const bool holds = c->condition->Eval();
  Releasing(c->mu);
  return holds;
}

}  // namespace

using absl::Condition;
using absl::CondVar;
using absl::Duration;
using absl::Mutex;
using absl::Time;

// Every definition below carries the mangled name of the member function it replaces.
#define RAPTR_TSAN_LOCK(name, mangled)                                            \
  extern "C++" void name(Mutex* mu) __asm__(mangled);                            \
  void name(Mutex* mu) {                                                          \
    static auto real = Real<void (*)(Mutex*)>(mangled);                           \
    real(mu);                                                                     \
    Acquired(mu);                                                                 \
  }
#define RAPTR_TSAN_UNLOCK(name, mangled)                                          \
  extern "C++" void name(Mutex* mu) __asm__(mangled);                            \
  void name(Mutex* mu) {                                                          \
    static auto real = Real<void (*)(Mutex*)>(mangled);                           \
    Releasing(mu);                                                                \
    real(mu);                                                                     \
  }
#define RAPTR_TSAN_TRYLOCK(name, mangled)                                         \
  extern "C++" bool name(Mutex* mu) __asm__(mangled);                            \
  bool name(Mutex* mu) {                                                          \
    static auto real = Real<bool (*)(Mutex*)>(mangled);                           \
    const bool locked = real(mu);                                                 \
    if (locked) Acquired(mu);                                                     \
    return locked;                                                                \
  }

RAPTR_TSAN_LOCK(RaptrTsanLock, "_ZN4absl7debian35Mutex4LockEv")
RAPTR_TSAN_LOCK(RaptrTsanReaderLock, "_ZN4absl7debian35Mutex10ReaderLockEv")
RAPTR_TSAN_UNLOCK(RaptrTsanUnlock, "_ZN4absl7debian35Mutex6UnlockEv")
RAPTR_TSAN_UNLOCK(RaptrTsanReaderUnlock, "_ZN4absl7debian35Mutex12ReaderUnlockEv")
RAPTR_TSAN_TRYLOCK(RaptrTsanTryLock, "_ZN4absl7debian35Mutex7TryLockEv")
RAPTR_TSAN_TRYLOCK(RaptrTsanReaderTryLock, "_ZN4absl7debian35Mutex13ReaderTryLockEv")

// Lock when a condition holds: returns holding the mutex.
#define RAPTR_TSAN_LOCK_WHEN(name, mangled, Extra, Ret)                           \
  extern "C++" Ret name(Mutex* mu, const Condition& c, Extra e) __asm__(mangled); \
  Ret name(Mutex* mu, const Condition& c, Extra e) {                              \
    static auto real = Real<Ret (*)(Mutex*, const Condition&, Extra)>(mangled);   \
    AnnotatedCondition annotated{&c, mu};                                         \
    Ret r = real(mu, Condition(&EvalAnnotated, &annotated), e);                   \
    Acquired(mu);                                                                 \
    return r;                                                                     \
  }
// Await: releases the mutex while waiting and holds it again on return.
#define RAPTR_TSAN_AWAIT(name, mangled, Extra)                                    \
  extern "C++" bool name(Mutex* mu, const Condition& c, Extra e) __asm__(mangled); \
  bool name(Mutex* mu, const Condition& c, Extra e) {                             \
    static auto real = Real<bool (*)(Mutex*, const Condition&, Extra)>(mangled);  \
    AnnotatedCondition annotated{&c, mu};                                         \
    Releasing(mu);                                                                \
    const bool r = real(mu, Condition(&EvalAnnotated, &annotated), e);            \
    Acquired(mu);                                                                 \
    return r;                                                                     \
  }

extern "C++" void RaptrTsanLockWhen(Mutex* mu, const Condition& c) __asm__(
    "_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
void RaptrTsanLockWhen(Mutex* mu, const Condition& c) {
  static auto real =
      Real<void (*)(Mutex*, const Condition&)>("_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  AnnotatedCondition annotated{&c, mu};
  real(mu, Condition(&EvalAnnotated, &annotated));
  Acquired(mu);
}
extern "C++" void RaptrTsanReaderLockWhen(Mutex* mu, const Condition& c) __asm__(
    "_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE");
void RaptrTsanReaderLockWhen(Mutex* mu, const Condition& c) {
  static auto real = Real<void (*)(Mutex*, const Condition&)>(
      "_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE");
  AnnotatedCondition annotated{&c, mu};
  real(mu, Condition(&EvalAnnotated, &annotated));
  Acquired(mu);
}
extern "C++" void RaptrTsanAwait(Mutex* mu, const Condition& c) __asm__(
    "_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
void RaptrTsanAwait(Mutex* mu, const Condition& c) {
  static auto real =
      Real<void (*)(Mutex*, const Condition&)>("_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
  AnnotatedCondition annotated{&c, mu};
  Releasing(mu);
  real(mu, Condition(&EvalAnnotated, &annotated));
  Acquired(mu);
}

RAPTR_TSAN_LOCK_WHEN(RaptrTsanLockWhenWithTimeout,
                     "_ZN4absl7debian35Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE",
                     Duration, bool)
RAPTR_TSAN_LOCK_WHEN(RaptrTsanLockWhenWithDeadline,
                     "_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE", Time,
                     bool)
RAPTR_TSAN_LOCK_WHEN(
    RaptrTsanReaderLockWhenWithTimeout,
    "_ZN4absl7debian35Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE", Duration,
    bool)
RAPTR_TSAN_LOCK_WHEN(
    RaptrTsanReaderLockWhenWithDeadline,
    "_ZN4absl7debian35Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE", Time, bool)
RAPTR_TSAN_AWAIT(RaptrTsanAwaitWithTimeout,
                 "_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE",
                 Duration)
RAPTR_TSAN_AWAIT(RaptrTsanAwaitWithDeadline,
                 "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE", Time)

// CondVar waits release the mutex they are given and hold it again on return.
extern "C++" void RaptrTsanCondWait(CondVar* cv, Mutex* mu) __asm__(
    "_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE");
void RaptrTsanCondWait(CondVar* cv, Mutex* mu) {
  static auto real =
      Real<void (*)(CondVar*, Mutex*)>("_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE");
  Releasing(mu);
  real(cv, mu);
  Acquired(mu);
}
extern "C++" bool RaptrTsanCondWaitWithTimeout(CondVar* cv, Mutex* mu, Duration d) __asm__(
    "_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
bool RaptrTsanCondWaitWithTimeout(CondVar* cv, Mutex* mu, Duration d) {
  static auto real = Real<bool (*)(CondVar*, Mutex*, Duration)>(
      "_ZN4absl7debian37CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  Releasing(mu);
  const bool r = real(cv, mu, d);
  Acquired(mu);
  return r;
}
extern "C++" bool RaptrTsanCondWaitWithDeadline(CondVar* cv, Mutex* mu, Time t) __asm__(
    "_ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
bool RaptrTsanCondWaitWithDeadline(CondVar* cv, Mutex* mu, Time t) {
  static auto real = Real<bool (*)(CondVar*, Mutex*, Time)>(
      "_ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  Releasing(mu);
  const bool r = real(cv, mu, t);
  Acquired(mu);
  return r;
}
