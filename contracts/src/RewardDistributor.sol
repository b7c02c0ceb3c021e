// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {Address} from "@openzeppelin/contracts/utils/Address.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {TrainingRegistry} from "./TrainingRegistry.sol";

/// @title RewardDistributor
/// @notice Funded per-session pools paid out by pull claims, in the native
/// currency (token == address(0)) or one ERC-20. Two settlement modes per epoch:
///  - per node: the coordinator credits each account's pending balance (O(n) storage);
///  - Merkle: the coordinator posts one root of (account, amount) leaves (O(1))
///    and each node claims with its proof.
/// Each (session, epoch) settles once, so a resent posting reverts with EpochAlreadySettled.
/// What a closed (completed or cancelled) session's pool never allocated goes back
/// through the admin's withdrawUnallocated; nothing else leaves a pool but claims.
contract RewardDistributor is AccessControl, Pausable, ReentrancyGuard {
    using SafeERC20 for IERC20;

    bytes32 public constant COORDINATOR_ROLE = keccak256("COORDINATOR_ROLE");

    struct MerkleEpoch {
        bytes32 root;
        uint256 total;
        uint256 claimed;
    }

    TrainingRegistry public immutable registry;
    IERC20 public immutable token;

    mapping(uint256 sessionId => uint256) public funded;
    mapping(uint256 sessionId => uint256) public allocated;
    mapping(uint256 sessionId => uint256) public withdrawn;
    mapping(uint256 sessionId => mapping(uint32 epoch => bool)) public epochSettled;
    mapping(address account => uint256) public pending;
    mapping(address account => uint256) public claimed;
    mapping(uint256 sessionId => mapping(uint32 epoch => MerkleEpoch)) private _merkleEpochs;
    mapping(uint256 sessionId => mapping(uint32 epoch => mapping(address account => bool))) public merkleClaimed;

    event PoolFunded(uint256 indexed sessionId, address indexed from, uint256 amount);
    event RewardsCalculated(uint256 indexed sessionId, uint32 indexed epoch, uint256 total, uint256 nodes, bytes32 root);
    event RewardClaimed(address indexed account, uint256 indexed sessionId, uint32 epoch, uint256 amount);
    event UnallocatedWithdrawn(uint256 indexed sessionId, address indexed to, uint256 amount);

    error InvalidAddress();
    error InvalidAmount();
    error LengthMismatch(uint256 accounts, uint256 amounts);
    error EmptyBatch();
    error UnknownSession(uint256 sessionId);
    error WrongValue(uint256 expected, uint256 sent);
    error EpochAlreadySettled(uint256 sessionId, uint32 epoch);
    error InsufficientPool(uint256 sessionId, uint256 available, uint256 requested);
    error NothingToClaim(address account);
    error ClaimExceedsPending(address account, uint256 pendingAmount, uint256 requested);
    error UnknownRoot(uint256 sessionId, uint32 epoch);
    error AlreadyClaimed(address account, uint256 sessionId, uint32 epoch);
    error InvalidProof(address account, uint256 amount);
    error RootOverdrawn(uint256 sessionId, uint32 epoch);
    error SessionStillActive(uint256 sessionId);
    error NothingToWithdraw(uint256 sessionId);

    constructor(TrainingRegistry registry_, IERC20 token_, address admin, address coordinator) {
        if (address(registry_) == address(0) || admin == address(0) || coordinator == address(0)) {
            revert InvalidAddress();
        }
        registry = registry_;
        token = token_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(COORDINATOR_ROLE, coordinator);
    }

    /// @notice Adds `amount` to a session's pool. Native pools need msg.value == amount;
    /// token pools pull `amount` with transferFrom (approve first).
    function fund(uint256 sessionId, uint256 amount) external payable whenNotPaused nonReentrant {
        if (amount == 0) revert InvalidAmount();
        if (registry.sessionStatus(sessionId) == TrainingRegistry.Status.None) revert UnknownSession(sessionId);
        if (address(token) == address(0)) {
            if (msg.value != amount) revert WrongValue(amount, msg.value);
        } else {
            if (msg.value != 0) revert WrongValue(0, msg.value);
            // Credit what actually arrived, so a fee-on-transfer token cannot over-fund a pool.
            uint256 before = token.balanceOf(address(this));
            token.safeTransferFrom(msg.sender, address(this), amount);
            amount = token.balanceOf(address(this)) - before;
        }
        funded[sessionId] += amount;
        emit PoolFunded(sessionId, msg.sender, amount);
    }

    /// @notice Per-node settlement: credits each account's pending balance.
    function postRewards(uint256 sessionId, uint32 epoch, address[] calldata accounts, uint256[] calldata amounts)
        external
        onlyRole(COORDINATOR_ROLE)
        whenNotPaused
    {
        if (accounts.length != amounts.length) revert LengthMismatch(accounts.length, amounts.length);
        if (accounts.length == 0) revert EmptyBatch();
        uint256 total;
        for (uint256 i = 0; i < accounts.length; ++i) {
            if (accounts[i] == address(0)) revert InvalidAddress();
            pending[accounts[i]] += amounts[i];
            total += amounts[i];
        }
        _settle(sessionId, epoch, total);
        emit RewardsCalculated(sessionId, epoch, total, accounts.length, bytes32(0));
    }

    /// @notice Merkle settlement: one root of (account, amount) leaves per epoch.
    function postRewardRoot(uint256 sessionId, uint32 epoch, bytes32 root, uint256 total, uint256 nodes)
        external
        onlyRole(COORDINATOR_ROLE)
        whenNotPaused
    {
        if (root == bytes32(0)) revert InvalidProof(address(0), 0);
        _settle(sessionId, epoch, total);
        _merkleEpochs[sessionId][epoch] = MerkleEpoch(root, total, 0);
        emit RewardsCalculated(sessionId, epoch, total, nodes, root);
    }

    /// @notice Withdraws `amount` of the caller's pending balance (partial claims allowed).
    function claim(uint256 amount) external nonReentrant whenNotPaused {
        uint256 owed = pending[msg.sender];
        if (owed == 0) revert NothingToClaim(msg.sender);
        if (amount == 0 || amount > owed) revert ClaimExceedsPending(msg.sender, owed, amount);
        _payPending(msg.sender, amount);
    }

    /// @notice Withdraws the caller's whole pending balance.
    function claimAll() external nonReentrant whenNotPaused {
        uint256 owed = pending[msg.sender];
        if (owed == 0) revert NothingToClaim(msg.sender);
        _payPending(msg.sender, owed);
    }

    /// @notice Pays `account` its leaf of an epoch's Merkle root. Anyone may submit;
    /// the funds go only to the account in the leaf.
    function claimMerkle(uint256 sessionId, uint32 epoch, address account, uint256 amount, bytes32[] calldata proof)
        external
        nonReentrant
        whenNotPaused
    {
        MerkleEpoch storage e = _merkleEpochs[sessionId][epoch];
        if (e.root == bytes32(0)) revert UnknownRoot(sessionId, epoch);
        if (merkleClaimed[sessionId][epoch][account]) revert AlreadyClaimed(account, sessionId, epoch);
        // Double-hashed leaf, as OpenZeppelin's StandardMerkleTree builds it (no second-preimage confusion).
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(account, amount))));
        if (!MerkleProof.verifyCalldata(proof, e.root, leaf)) revert InvalidProof(account, amount);
        if (e.claimed + amount > e.total) revert RootOverdrawn(sessionId, epoch);
        merkleClaimed[sessionId][epoch][account] = true;
        e.claimed += amount;
        claimed[account] += amount;
        emit RewardClaimed(account, sessionId, epoch, amount);
        _pay(account, amount);
    }

    function merkleEpoch(uint256 sessionId, uint32 epoch) external view returns (MerkleEpoch memory) {
        return _merkleEpochs[sessionId][epoch];
    }

    /// @notice Sends what a completed or cancelled session's pool never allocated to `to`.
    /// The amount is remembered as withdrawn, so a repeat finds nothing and later
    /// fundings of the session can be withdrawn in turn; postings can never use it again.
    function withdrawUnallocated(uint256 sessionId, address to)
        external
        onlyRole(DEFAULT_ADMIN_ROLE)
        whenNotPaused
        nonReentrant
    {
        if (to == address(0)) revert InvalidAddress();
        TrainingRegistry.Status status = registry.sessionStatus(sessionId);
        if (status == TrainingRegistry.Status.None) revert UnknownSession(sessionId);
        if (status == TrainingRegistry.Status.Active) revert SessionStillActive(sessionId);
        uint256 amount = _free(sessionId);
        if (amount == 0) revert NothingToWithdraw(sessionId);
        withdrawn[sessionId] += amount;
        emit UnallocatedWithdrawn(sessionId, to, amount);
        _pay(to, amount);
    }

    function available(uint256 sessionId) external view returns (uint256) {
        return _free(sessionId);
    }

    function pause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _pause();
    }

    function unpause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _unpause();
    }

    function _settle(uint256 sessionId, uint32 epoch, uint256 total) private {
        if (total == 0) revert InvalidAmount();
        if (registry.sessionStatus(sessionId) == TrainingRegistry.Status.None) revert UnknownSession(sessionId);
        if (epochSettled[sessionId][epoch]) revert EpochAlreadySettled(sessionId, epoch);
        uint256 free = _free(sessionId);
        if (total > free) revert InsufficientPool(sessionId, free, total);
        epochSettled[sessionId][epoch] = true;
        allocated[sessionId] += total;
    }

    /// @dev Funded, less what was allocated to epochs and what the admin took back.
    function _free(uint256 sessionId) private view returns (uint256) {
        return funded[sessionId] - allocated[sessionId] - withdrawn[sessionId];
    }

    function _payPending(address account, uint256 amount) private {
        pending[account] -= amount;
        claimed[account] += amount;
        emit RewardClaimed(account, 0, 0, amount);
        _pay(account, amount);
    }

    function _pay(address account, uint256 amount) private {
        if (address(token) == address(0)) {
            Address.sendValue(payable(account), amount);
        } else {
            token.safeTransfer(account, amount);
        }
    }
}
