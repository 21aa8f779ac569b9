// Stand-in for <gloo/common/memory.h>, which Debian 12's libgloo-dev (0.0~git20220518) does not
// install although <gloo/transport/tcp/pair.h> includes it. raptr includes tcp/pair.h only to reach
// a pair's socket and mutex (worker/collective/gloo_group.cc, GlooGroup::Abort); both lie before
// the first member whose type uses these templates, so their layout here does not matter, and no
// code in raptr constructs, copies or destroys a Pair, an Op or these pointers.
//
// It is found with -idirafter, after the system headers: a Gloo that ships the real header wins.
#pragma once

namespace gloo {

template <typename T>
class NonOwningPtr {
  T* ptr_ = nullptr;
};

template <typename T>
class WeakNonOwningPtr {
  T* ptr_ = nullptr;
};

}  // namespace gloo
