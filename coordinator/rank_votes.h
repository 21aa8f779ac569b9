// RankVotes: which ranks of a group have answered a request (an evaluation, a checkpoint).
// Answers count distinct ranks, so a rank that answers twice cannot stand in for one that did
// not answer: a checkpoint commits only when every rank vouched for it.
#pragma once

#include <vector>

namespace raptr {

class RankVotes {
 public:
  RankVotes() = default;
  explicit RankVotes(int world) : answered_(world, false) {}

  enum class Result { kCounted, kDuplicate, kOutOfRange };
  Result Add(int rank) {
    if (rank < 0 || rank >= static_cast<int>(answered_.size())) return Result::kOutOfRange;
    if (answered_[rank]) return Result::kDuplicate;
    answered_[rank] = true;
    ++count_;
    return Result::kCounted;
  }
  bool Answered(int rank) const {
    return rank >= 0 && rank < static_cast<int>(answered_.size()) && answered_[rank];
  }
  bool Complete() const { return !answered_.empty() && count_ == static_cast<int>(answered_.size()); }
  int count() const { return count_; }

 private:
  std::vector<bool> answered_;
  int count_ = 0;
};

}  // namespace raptr
