"""User accounts: create users, change their flags, memberships and passwords.

Every function takes the session first and never commits: the caller does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db import insert_ignore, new_uid
from service.errors import Conflict, Forbidden, InvalidInput, NotFound, UnknownReference
from service.models import OrgUnit, User, UserGroup, user_group_members, user_org_units
from service.passwords import check_new_password, hash_password, verify_password

MAX_USERNAME_LENGTH = 255


def check_username(username: object) -> str | None:
    """Why `username` is not acceptable, or None when it is.

    Usernames are what people type at the sign-in form and what other users search for, so they
    may hold no whitespace or unprintable characters; case is kept and matters (as in DHIS2).
    """
    if not isinstance(username, str) or not username:
        return "Username must not be empty."
    if len(username) > MAX_USERNAME_LENGTH:
        return f"Username must be at most {MAX_USERNAME_LENGTH} characters."
    if any(c.isspace() or not c.isprintable() for c in username):
        return "Username must not contain spaces or control characters."
    return None


def get_user_by_username(session: Session, username: str) -> User | None:
    """The user with exactly this username, or None."""
    return session.scalar(select(User).where(User.username == username))


def _password_hash(password: str) -> str:
    problem = check_new_password(password)
    if problem is not None:
        raise InvalidInput(problem, field="password")
    return hash_password(password)


def _resolve(
    session: Session, model: type[OrgUnit] | type[UserGroup], uids: Iterable[str], what: str
) -> list[int]:
    """Internal ids for `uids` (deduplicated, in the order given); UnknownReference names a miss."""
    wanted = list(dict.fromkeys(uids))
    if not wanted:
        return []
    found = dict(session.execute(select(model.uid, model.id).where(model.uid.in_(wanted))).all())
    missing = [uid for uid in wanted if uid not in found]
    if missing:
        field = "org_unit" if model is OrgUnit else "group"
        raise UnknownReference(f"Unknown {what}: {', '.join(missing)}", field=field)
    return [found[uid] for uid in wanted]


def _add_memberships(
    session: Session, user_id: int, org_unit_ids: Sequence[int], group_ids: Sequence[int]
) -> None:
    if org_unit_ids:
        session.execute(
            insert_ignore(session, user_org_units),
            [{"user_id": user_id, "org_unit_id": ou} for ou in org_unit_ids],
        )
    if group_ids:
        session.execute(
            insert_ignore(session, user_group_members),
            [{"user_id": user_id, "group_id": g} for g in group_ids],
        )


def create_user(
    session: Session,
    username: str,
    password: str | None = None,
    org_unit_uids: Iterable[str] = (),
    group_uids: Iterable[str] = (),
    admin: bool = False,
    broadcaster: bool = False,
    first_name: str | None = None,
    surname: str | None = None,
) -> User:
    """Create a user with a new uid. Without a password the user exists (and can receive
    messages) but cannot sign in until one is set.

    Raises InvalidInput (bad username or password), UnknownReference (an org unit or group uid
    that does not exist) or Conflict (the username is taken). Flushes; the caller commits.
    """
    problem = check_username(username)
    if problem is not None:
        raise InvalidInput(problem, field="username")
    # Check the cheap things and the references before paying for a bcrypt hash.
    if password is not None and (problem := check_new_password(password)) is not None:
        raise InvalidInput(problem, field="password")
    org_unit_ids = _resolve(session, OrgUnit, org_unit_uids, "organisation unit")
    group_ids = _resolve(session, UserGroup, group_uids, "user group")
    if get_user_by_username(session, username) is not None:
        raise Conflict(f"Username {username} is already taken.", field="username")
    user = User(
        uid=new_uid(),
        username=username,
        password_hash=None if password is None else hash_password(password),
        is_admin=admin,
        is_broadcaster=broadcaster,
        first_name=first_name,
        surname=surname,
    )
    # A concurrent transaction may take the name between the check and the flush; the savepoint
    # turns that into the same Conflict instead of poisoning the caller's transaction.
    try:
        with session.begin_nested():
            session.add(user)
            session.flush()
    except IntegrityError:
        raise Conflict(f"Username {username} is already taken.", field="username") from None
    _add_memberships(session, user.id, org_unit_ids, group_ids)
    session.expire(user, ["org_units", "groups"])
    return user


def update_user(
    session: Session,
    user: User,
    *,
    password: str | None = None,
    add_org_unit_uids: Iterable[str] = (),
    add_group_uids: Iterable[str] = (),
    admin: bool | None = None,
    broadcaster: bool | None = None,
    disabled: bool | None = None,
) -> User:
    """Change what is given and leave the rest: None means "keep". Memberships are only added
    (already present ones are fine). Raises InvalidInput or UnknownReference before changing
    anything. Flushes; the caller commits.
    """
    new_hash = None if password is None else _password_hash(password)
    org_unit_ids = _resolve(session, OrgUnit, add_org_unit_uids, "organisation unit")
    group_ids = _resolve(session, UserGroup, add_group_uids, "user group")
    if new_hash is not None:
        user.password_hash = new_hash
    if admin is not None:
        user.is_admin = admin
    if broadcaster is not None:
        user.is_broadcaster = broadcaster
    if disabled is not None:
        user.disabled = disabled
    session.flush()
    _add_memberships(session, user.id, org_unit_ids, group_ids)
    session.expire(user, ["org_units", "groups"])
    return user


# ---------------------------------------------------------------------------------------------
# Administrators manage accounts; everyone changes their own password

MAX_QUERY_LENGTH = 100


@dataclass(frozen=True)
class UserPage:
    items: list[User]
    total: int
    page: int
    page_size: int

    @property
    def page_count(self) -> int:
        return max(1, -(-self.total // self.page_size))


def _require_admin(actor: User) -> None:
    if not actor.is_admin or actor.disabled:
        raise Forbidden("Only administrators may manage users.")


def _like(value: str) -> str:
    return "%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def find_users(
    session: Session, actor: User, query: str = "", *, page: int = 1, page_size: int = 25
) -> UserPage:
    """Users whose username, first name, surname or uid matches every word of `query`, by
    username, one page of them and the total: two statements, the search in SQL. Forbidden
    unless `actor` is an administrator. Disabled users are found too (to be enabled again)."""
    _require_admin(actor)
    words = query.split()[:5] if query else []
    cond = []
    for word in words:
        pattern = _like(word.lower()[:MAX_QUERY_LENGTH])
        cond.append(
            or_(
                func.lower(User.username).like(pattern, escape="\\"),
                func.lower(User.first_name).like(pattern, escape="\\"),
                func.lower(User.surname).like(pattern, escape="\\"),
                User.uid == word,
            )
        )
    total = session.scalar(select(func.count()).select_from(User).where(*cond)) or 0
    items = session.scalars(
        select(User)
        .where(*cond)
        .order_by(User.username, User.id)
        .offset(max(0, page - 1) * page_size)
        .limit(page_size)
    ).all()
    return UserPage(items=list(items), total=int(total), page=page, page_size=page_size)


def get_user_by_uid(session: Session, actor: User, uid: str) -> User:
    """The user with this uid, for an administrator; Forbidden for anyone else."""
    _require_admin(actor)
    user = session.scalar(select(User).where(User.uid == uid))
    if user is None:
        raise NotFound(f"User does not exist: {uid}", field="id")
    return user


def set_access(
    session: Session,
    actor: User,
    target: User,
    *,
    disabled: bool | None = None,
    admin: bool | None = None,
    broadcaster: bool | None = None,
) -> User:
    """An administrator enables or disables `target`, or grants or revokes its administrator or
    broadcaster role (None keeps a flag). Nobody disables themselves or drops their own
    administrator role (Conflict): so at least one active administrator always remains, and an
    administrator cannot lock themselves out by a slip. Flushes; the caller commits."""
    _require_admin(actor)
    if target.id == actor.id and disabled:
        raise Conflict("You cannot disable your own account.", field="disabled")
    if target.id == actor.id and admin is False:
        raise Conflict(
            "You cannot remove your own administrator role; ask another administrator.",
            field="admin",
        )
    return update_user(session, target, disabled=disabled, admin=admin, broadcaster=broadcaster)


def reset_password(session: Session, actor: User, target: User, password: str) -> User:
    """An administrator sets `target`'s password (the new-password rules apply: InvalidInput
    naming `password`). Flushes; the caller commits."""
    _require_admin(actor)
    return update_user(session, target, password=password)


def change_own_password(session: Session, user: User, current: str, new: str) -> User:
    """`user` changes their own password: the current one must be right (InvalidInput naming
    `current_password`), the new one must follow the rules and differ from it (naming
    `password`). Flushes; the caller commits."""
    if not verify_password(current, user.password_hash):
        raise InvalidInput("Your current password is not right.", field="current_password")
    if new == current:
        raise InvalidInput(
            "The new password must be different from the current one.", field="password"
        )
    return update_user(session, user, password=new)
