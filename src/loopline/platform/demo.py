"""Bootstrap use cases: an administrator login, and the Demo business unit with sample data. Both idempotent."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from loopline.accounts import services as account_services
from loopline.accounts.access import Access
from loopline.accounts.models import BusinessUnit, Membership, User
from loopline.campaigns.models import Campaign
from loopline.prospects import services as prospect_services
from loopline.prospects.models import ActivityType, CustomField, Prospect, Tag

DEMO_BU_NAME = "Demo"
DEMO_BU_SLUG = "demo"
DEMO_DOMAIN = "demo.loopline.test"
DEMO_ADMIN_EMAIL = f"admin@{DEMO_DOMAIN}"
DEMO_USERS = (  # email local part, first, last, role
    ("admin", "Ada", "Admin", "administrator"),
    ("marketing", "Mona", "Marketer", "marketing"),
    ("manager", "Sam", "Manager", "sales_manager"),
    ("sales", "Rex", "Rep", "sales"),
)
CREDENTIALS_FILE = "demo_admin.json"


@dataclass(frozen=True)
class Login:
    email: str
    password: str | None  # None: unchanged and unknown
    bu: BusinessUnit
    created: bool


# --- Administrator ------------------------------------------------------------------------------------------------


@transaction.atomic
def ensure_admin(
    email: str,
    *,
    password: str | None = None,
    bu_name: str | None = None,
    first_name: str = "",
    last_name: str = "",
) -> Login:
    """Create or update a user and make them Administrator of the business unit (created if missing).

    Without ``password``: a new user gets a generated one (returned); an existing user keeps theirs (None returned).
    """
    email = email.strip().lower()
    bu = _business_unit(bu_name)
    user = User.objects.filter(email=email).first()
    created = user is None
    if user is None:
        password = password or account_services.generate_password()
        user = account_services.create_user(
            email, password=password, first_name=first_name, last_name=last_name, bu=bu
        )
    elif password:
        user.set_password(password)
        user.is_active = True
        user.save(update_fields=["password", "is_active"])
    account_services.set_membership(bu, user, "administrator")
    return Login(email=email, password=password, bu=bu, created=created)


def _business_unit(name: str | None) -> BusinessUnit:
    if name:
        bu = BusinessUnit.objects.filter(name__iexact=name.strip()).order_by("pk").first()
        return bu or account_services.create_business_unit(name)
    existing = list(BusinessUnit.objects.order_by("pk")[:2])
    if len(existing) == 1:
        return existing[0]
    if not existing:
        return account_services.create_business_unit("Default")
    raise ValueError("Several business units exist; say which one with --bu NAME")


# --- Demo data ---------------------------------------------------------------------------------------------------


def credentials_path() -> Path:
    return Path(settings.DATA_DIR) / CREDENTIALS_FILE


def demo_password() -> str:
    """The demo users' password, generated once and kept (0600) in the data folder so every run prints the same."""
    path = credentials_path()
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            if stored.get("password"):
                return stored["password"]
        except (OSError, ValueError):
            pass
    password = account_services.generate_password()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"email": DEMO_ADMIN_EMAIL, "password": password}, fh)
    os.replace(tmp, path)
    return password


def demo_business_unit() -> BusinessUnit | None:
    return BusinessUnit.objects.filter(slug=DEMO_BU_SLUG).first()


FIRST_NAMES = [
    "Olivia",
    "Liam",
    "Emma",
    "Noah",
    "Amelia",
    "Oliver",
    "Sophia",
    "Elijah",
    "Isabella",
    "James",
    "Mia",
    "Lucas",
    "Charlotte",
    "Mateo",
    "Harper",
    "Henry",
    "Evelyn",
    "Theodore",
    "Luna",
    "Benjamin",
    "Aisha",
    "Kenji",
    "Priya",
    "Diego",
    "Fatima",
    "Lars",
    "Ingrid",
    "Mei",
    "Tomasz",
    "Chiara",
    "Rafael",
    "Ngozi",
    "Hannah",
    "Omar",
    "Yuki",
    "Sven",
    "Camila",
    "Arjun",
    "Zoe",
    "Malik",
    "Elena",
    "Pierre",
    "Sofia",
    "Ivan",
    "Grace",
    "Daniel",
    "Leila",
    "Marco",
    "Nora",
    "Samuel",
]
LAST_NAMES = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Thompson",
    "White",
    "Harris",
    "Clark",
    "Lewis",
    "Walker",
    "Hall",
    "Young",
    "Nakamura",
    "Kowalski",
    "Rossi",
    "Schmidt",
    "Okafor",
    "Patel",
    "Nguyen",
    "Kim",
    "Dubois",
    "Larsen",
    "Silva",
    "Cohen",
    "Novak",
    "Fischer",
    "Haddad",
    "Ivanova",
    "Murphy",
    "O'Brien",
    "Bianchi",
]
COMPANIES = (
    ("Northwind Traders", "northwind.example", "Retail", 1200, "Seattle", "WA", "United States"),
    ("Contoso Pharmaceuticals", "contoso.example", "Healthcare", 5400, "Boston", "MA", "United States"),
    ("Fabrikam Robotics", "fabrikam.example", "Manufacturing", 850, "Detroit", "MI", "United States"),
    ("Tailspin Aviation", "tailspin.example", "Aerospace", 2300, "Toulouse", "", "France"),
    ("Wide World Importers", "wideworld.example", "Logistics", 640, "Rotterdam", "", "Netherlands"),
    (
        "Adventure Works Cycles",
        "adventureworks.example",
        "Consumer Goods",
        410,
        "Portland",
        "OR",
        "United States",
    ),
    ("Litware Analytics", "litware.example", "Software", 180, "Austin", "TX", "United States"),
    ("Proseware Learning", "proseware.example", "Education", 95, "Edinburgh", "", "United Kingdom"),
    ("Woodgrove Bank", "woodgrove.example", "Financial Services", 9800, "Toronto", "ON", "Canada"),
    ("Alpine Ski House", "alpineski.example", "Hospitality", 260, "Innsbruck", "", "Austria"),
    ("Coho Winery", "cohowinery.example", "Food & Beverage", 75, "Napa", "CA", "United States"),
    ("Blue Yonder Airlines", "blueyonder.example", "Aerospace", 7100, "Dublin", "", "Ireland"),
    ("Fourth Coffee", "fourthcoffee.example", "Food & Beverage", 330, "Melbourne", "VIC", "Australia"),
    ("Lucerne Publishing", "lucerne.example", "Media", 520, "Zurich", "", "Switzerland"),
    ("Margie's Travel", "margiestravel.example", "Hospitality", 140, "Lisbon", "", "Portugal"),
    ("Trey Research", "treyresearch.example", "Biotechnology", 690, "San Diego", "CA", "United States"),
    ("Graphic Design Institute", "gdi.example", "Education", 60, "Berlin", "", "Germany"),
    ("Humongous Insurance", "humongous.example", "Insurance", 12500, "Hartford", "CT", "United States"),
    ("Relecloud", "relecloud.example", "Software", 2100, "Bangalore", "KA", "India"),
    ("VanArsdel Ltd", "vanarsdel.example", "Manufacturing", 1500, "Osaka", "", "Japan"),
)
TITLES = (
    ("VP Marketing", "Marketing"),
    ("Marketing Manager", "Marketing"),
    ("Demand Generation Lead", "Marketing"),
    ("Chief Technology Officer", "Engineering"),
    ("IT Director", "IT"),
    ("Head of Sales", "Sales"),
    ("Sales Operations Analyst", "Sales"),
    ("Chief Financial Officer", "Finance"),
    ("Procurement Manager", "Finance"),
    ("Product Manager", "Product"),
    ("Operations Director", "Operations"),
    ("CEO", "Executive"),
    ("Customer Success Manager", "Customer Success"),
    ("Data Analyst", "IT"),
    ("Content Strategist", "Marketing"),
)
SOURCES = ("Website", "Webinar", "Trade show", "Paid search", "Referral", "Content download", "Import")
TAGS = ("Newsletter", "Webinar attendee", "Hot lead", "Partner", "Event 2026", "Competitor user")
CAMPAIGNS = (
    ("Spring Product Webinar", "Webinar", Campaign.Status.COMPLETED),
    ("Q3 Newsletter", "Email", Campaign.Status.IN_PROGRESS),
    ("Industry Expo 2026", "Trade show", Campaign.Status.PLANNED),
    ("Paid Search – Automation", "Paid search", Campaign.Status.IN_PROGRESS),
    ("Customer Referral Program", "Referral", Campaign.Status.IN_PROGRESS),
)
CUSTOM_FIELDS = (
    {
        "name": "Product interest",
        "api_name": "product_interest",
        "type": CustomField.Type.DROPDOWN,
        "options": ["Email marketing", "Lead scoring", "CRM sync", "Landing pages"],
    },
    {"name": "Budget approved", "api_name": "budget_approved", "type": CustomField.Type.CHECKBOX},
    {"name": "Seats", "api_name": "seats", "type": CustomField.Type.NUMBER},
    {"name": "Preferred language", "api_name": "preferred_language", "type": CustomField.Type.TEXT},
)
PAGES = (
    "/",
    "/pricing",
    "/features/scoring",
    "/features/crm-sync",
    "/blog/lead-nurturing-101",
    "/customers",
    "/webinars/spring-launch",
    "/contact",
)


@dataclass
class DemoSummary:
    bu: BusinessUnit
    password: str
    users: dict[str, User]
    prospects_created: int
    prospects_total: int


def build_demo(prospects: int = 200, *, seed: int = 7) -> DemoSummary:
    """Create (or complete) the Demo business unit. Running it again adds nothing that is already there."""
    fresh_password = not credentials_path().exists()
    password = demo_password()
    with transaction.atomic():
        bu = demo_business_unit() or account_services.create_business_unit(
            DEMO_BU_NAME,
            slug=DEMO_BU_SLUG,
            postal_address="Loopline Demo Inc., 1 Example Way, Springfield",
            website="https://www.demo.loopline.test",
        )
        users: dict[str, User] = {}
        for local, first, last, role in DEMO_USERS:
            email = f"{local}@{DEMO_DOMAIN}"
            user = User.objects.filter(email=email).first()
            if user is None:
                user = account_services.create_user(
                    email, password=password, first_name=first, last_name=last, bu=bu
                )
            elif fresh_password:
                # The stored password was lost (data folder cleaned?): make the printed one true again.
                user.set_password(password)
                user.save(update_fields=["password"])
            if not Membership.objects.filter(bu=bu, user=user, role__key=role).exists():
                account_services.set_membership(bu, user, role)
            users[role] = user
        admin_access = Access.for_user(users["administrator"], bu)
        for spec in CUSTOM_FIELDS:
            if not CustomField.objects.filter(bu=bu, api_name=spec["api_name"]).exists():
                prospect_services.save_custom_field(admin_access, spec)
        campaigns = []
        today = timezone.localdate()
        for i, (name, kind, status) in enumerate(CAMPAIGNS):
            campaign, _ = Campaign.objects.get_or_create(
                bu=bu,
                name=name,
                defaults={
                    "type": kind,
                    "status": status,
                    "start_date": today - dt.timedelta(days=90 - 20 * i),
                    "budgeted_cost": 5000 + 2500 * i,
                },
            )
            campaigns.append(campaign)
        tags = {name: prospect_services.get_or_create_tag(bu, name) for name in TAGS}
        created = _create_prospects(bu, prospects, seed, users, campaigns, tags)
    total = Prospect.objects.filter(bu=bu, is_deleted=False).count()
    return DemoSummary(
        bu=bu, password=password, users=users, prospects_created=created, prospects_total=total
    )


def _create_prospects(bu, count, seed, users, campaigns, tags: dict[str, Tag]) -> int:
    rng = random.Random(seed)
    existing = set(Prospect.objects.filter(bu=bu).values_list("email", flat=True))
    now = timezone.now()
    sales_user = users["sales"]
    manager = users["sales_manager"]
    created = 0
    for i in range(count):
        # Draw every random value, whether or not the prospect exists, so the sequence is stable across runs.
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        company, domain, industry, employees, city, state, country = rng.choice(COMPANIES)
        title, department = rng.choice(TITLES)
        source = rng.choice(SOURCES)
        campaign = rng.choice(campaigns)
        age_days = rng.randint(1, 180)
        n_activities = rng.randint(1, 6)
        activity_seeds = [rng.random() for _ in range(n_activities * 3)]
        tag_names = rng.sample(TAGS, rng.randint(0, 2))
        owner_roll = rng.random()
        interest = rng.choice(CUSTOM_FIELDS[0]["options"])
        seats = rng.choice([5, 10, 25, 50, 100, 250])
        phone = f"+1 555 {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
        minutes = rng.randint(0, 1440)
        local = f"{first}.{last}".lower().replace("'", "")
        email = f"{local}{i + 1}@{domain}"
        if email in existing:
            continue
        assigned = sales_user if owner_roll < 0.3 else manager if owner_roll < 0.4 else None
        created_at = now - dt.timedelta(days=age_days, minutes=minutes)
        prospect = prospect_services.create_prospect(
            bu,
            {
                "email": email,
                "first_name": first,
                "last_name": last,
                "company": company,
                "website": f"https://www.{domain}",
                "job_title": title,
                "department": department,
                "city": city,
                "state": state,
                "country": country,
                "industry": industry,
                "employees": str(employees),
                "source": source,
                "phone": phone,
                "product_interest": interest,
                "seats": str(seats),
                "budget_approved": "yes" if owner_roll < 0.25 else "no",
            },
            source="demo",
            extra={
                "source_campaign": campaign,
                "assigned_user": assigned,
                "assigned_at": now if assigned else None,
            },
        )
        if tag_names:
            prospect_services.add_tags(prospect, tag_names)
        prospect_services.record_activity(
            bu.pk,
            ActivityType.PROSPECT_CREATED,
            prospect=prospect,
            occurred_at=created_at,
            title="Created from demo data",
        )
        for k in range(n_activities):
            r1, r2, r3 = activity_seeds[3 * k : 3 * k + 3]
            when = created_at + dt.timedelta(days=age_days * r1)
            if r2 < 0.45:
                page = PAGES[int(r3 * len(PAGES))]
                prospect_services.record_activity(
                    bu.pk,
                    ActivityType.PAGE_VIEW,
                    prospect=prospect,
                    occurred_at=when,
                    title=f"Viewed {page}",
                    url=f"https://www.demo.loopline.test{page}",
                    points=1,
                )
            elif r2 < 0.7:
                prospect_services.record_activity(
                    bu.pk,
                    ActivityType.EMAIL_OPEN,
                    prospect=prospect,
                    occurred_at=when,
                    title=f"Opened “{campaign.name}”",
                    campaign_id=campaign.pk,
                )
            elif r2 < 0.85:
                prospect_services.record_activity(
                    bu.pk,
                    ActivityType.EMAIL_CLICK,
                    prospect=prospect,
                    occurred_at=when,
                    title=f"Clicked a link in “{campaign.name}”",
                    campaign_id=campaign.pk,
                    points=3,
                )
            else:
                prospect_services.record_activity(
                    bu.pk,
                    ActivityType.FORM_SUCCESS,
                    prospect=prospect,
                    occurred_at=when,
                    title="Submitted Contact us",
                    campaign_id=campaign.pk,
                    points=50,
                )
        created += 1
    return created
